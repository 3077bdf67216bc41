# The two README commands: `make demo` (build + run the demo) and `make test`
# (build + run the test suite). Both install missing Debian packages first.
BUILD ?= build
JOBS  ?= $(shell nproc)
FUZZ_SECONDS ?= 60
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: deps configure build demo test bench package clean asan tsan

deps:
	@./scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	@./$(BUILD)/examples/demo

# The install check (README examples included), the fuzzers (manager,
# Connection frames, serializer) for FUZZ_SECONDS in all over their committed
# corpora (clang, ASan + UBSan), then the tests.
test: build
	@./scripts/check-consumer.sh $(BUILD)
	@./scripts/fuzz.sh $(FUZZ_SECONDS) > $(BUILD)/fuzz.log 2>&1 \
	  && echo "fuzz: $$(grep -E '^(== fuzz_|Done [0-9]+ runs)' $(BUILD)/fuzz.log | paste -sd ' ')" \
	  || { tail -n 60 $(BUILD)/fuzz.log; echo "fuzz: FAILED (full log: $(BUILD)/fuzz.log)"; exit 1; }
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 300

# A Debian package of the library (libmproc-dev_<version>_<arch>.deb in $(BUILD)/).
package: build
	@cd $(BUILD) && cpack -G DEB >/dev/null && ls -1 $(CURDIR)/$(BUILD)/*.deb

# Sanitizer builds of the test suite (docs/development.md): ASan + UBSan in
# build-asan/, ThreadSanitizer in build-tsan/ (the CMake presets of the same
# names), then the suite under them. SAN_TESTS: a ctest -R regex to run only
# some tests; SAN_EXCLUDE: a ctest -E regex.
# SAN_CTEST_JOBS: parallel tests (default JOBS).
SAN_TESTS ?= .
SAN_EXCLUDE ?= ^$$
SAN_CTEST_JOBS ?= $(JOBS)
asan tsan: deps
	@cmake --preset $@ $(SAN_CMAKE_FLAGS) >/dev/null
	@cmake --build build-$@ -j $(JOBS) --target mproc_tests
	@cd build-$@ && ctest --output-on-failure -j $(SAN_CTEST_JOBS) --timeout 600 -R '$(SAN_TESTS)' -E '$(SAN_EXCLUDE)'

bench: build
	@python3 bench/compare.py --build $(BUILD)

clean:
	rm -rf $(BUILD) build-asan build-tsan
