# make run    the daemon with etc/config.example.yaml, a demo API and (if needed) a local broker
# make test   ruff, then the suite on paho-mqtt 2.x and the tests marked paho again on 1.6.1 (bin/test)
# make check  validate the example config
# make deb / make arch-pkg   the Debian / Arch (PiKVM) package, into dist/
# make package-check         what CI checks of the packages (root: installs and purges the .deb)
# make bench / make profile  bench/RESULTS.md: speed, footprint and loss; where the CPU goes

PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test check venv clean deb arch-pkg package-check bench profile

venv:
	bin/bootstrap

run: venv
	bin/run-demo

test: venv
	bin/bootstrap --paho1
	bin/test $(PYTEST_ARGS)

check: venv
	.venv/bin/python -m mqttbuffer --config etc/config.example.yaml --check

deb:
	bin/build-deb

arch-pkg:
	bin/build-arch

package-check: venv
	bin/check-packages

clean:
	rm -rf .venv .venv-paho1 .run build dist *.egg-info .pytest_cache .pybuild

bench: venv
	.venv/bin/python bench/run.py $(BENCH_ARGS)

profile: venv
	.venv/bin/pip install --quiet py-spy
	.venv/bin/python bench/profile.py
