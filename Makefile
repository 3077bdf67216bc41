# The two README commands: `make demo` (build + run the demo) and `make test`
# (build + run the test suite). Both install missing Debian packages first.
BUILD ?= build
JOBS  ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: deps configure build demo test bench clean

deps:
	@./scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	@./$(BUILD)/examples/demo

test: build
	@./scripts/check-consumer.sh $(BUILD)
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 300

bench: build
	@python3 bench/compare.py --build $(BUILD)

clean:
	rm -rf $(BUILD)
