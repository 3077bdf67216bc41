# The two README commands: `make demo` (build + run the demo) and `make test`
# (build + run the test suite). Both install missing Debian packages first.
BUILD ?= build
JOBS  ?= $(shell nproc)
FUZZ_SECONDS ?= 60
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: deps configure build demo test bench package clean asan tsan docs header-size include-graph

deps:
	@./scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	@./$(BUILD)/examples/demo

# The API reference (docs, its warnings are errors), the install check
# (README examples included), the fuzzers (manager,
# Connection frames, serializer) for FUZZ_SECONDS in all over their committed
# corpora (clang, ASan + UBSan), then the tests.
test: build docs
	@./scripts/check-consumer.sh $(BUILD)
	@./scripts/fuzz.sh $(FUZZ_SECONDS) > $(BUILD)/fuzz.log 2>&1 \
	  && echo "fuzz: $$(grep -E '^(== fuzz_|Done [0-9]+ runs)' $(BUILD)/fuzz.log | paste -sd ' ')" \
	  || { tail -n 60 $(BUILD)/fuzz.log; echo "fuzz: FAILED (full log: $(BUILD)/fuzz.log)"; exit 1; }
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 300

# The API reference from the public headers' comments (Doxyfile; doxygen's
# warnings are errors): $(BUILD)/docs/html/index.html. About 10 s of CPU.
VERSION = $(shell sed -n 's/^project.mproc VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
docs: deps
	@rm -rf $(BUILD)/docs && mkdir -p $(BUILD)/docs
	@MPROC_DOCS_DIR=$(BUILD)/docs MPROC_VERSION=$(VERSION) doxygen Doxyfile \
	  && echo "docs: $(BUILD)/docs/html/index.html"

# What including each public header costs (preprocessed lines, headers, CPU
# time): docs/header-size.md. About a minute of CPU.
header-size:
	@python3 scripts/header-size.py --out docs/header-size.md

# The include graphs in docs/architecture.md (public headers; src/ layers),
# regenerated from the sources; fails if a src/ layer includes one above it.
include-graph:
	@python3 scripts/include-graph.py

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
