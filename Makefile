# s3-helper: see README.md. Every target works on a fresh Debian 12 machine
# with Go 1.26 once .ci/run (or the README's set-up) installed nginx and curl.
GO ?= go
BINARY ?= s3-helper

.PHONY: build test unit e2e demo bench bench-load fuzz vet deb image clean

# A static binary to copy onto the instance.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BINARY) .

# The whole suite: unit tests and end-to-end tests against versitygw, the
# IMDS emulator and nginx, which scripts/testenv.sh starts and stops.
test:
	scripts/testenv.sh run -- $(GO) test -race -count=1 -timeout 25m ./...

# Unit tests only: no servers needed.
unit:
	S3_HELPER_E2E=0 $(GO) test -race -count=1 ./...

# s3-helper in front of a local S3-compatible server, until Ctrl-C.
demo:
	scripts/testenv.sh demo

# The Debian package (dpkg-deb, help2man): s3-helper_VERSION_ARCH.deb here.
deb:
	GO=$(GO) packaging/build-deb.sh .

# The OCI image (buildah, FROM scratch): s3-helper_VERSION_oci.tar here.
image:
	GO=$(GO) packaging/build-image.sh .

vet:
	gofmt -l . | (! grep .) && $(GO) vet ./...

bench:
	S3_HELPER_E2E=0 $(GO) test -run '^$$' -bench . -benchmem -count 3 .

bench-load:
	$(GO) run ./tools/loadtest

fuzz:
	S3_HELPER_E2E=0 $(GO) test -run '^$$' -fuzz FuzzCanonicalURI -fuzztime 30s .
	S3_HELPER_E2E=0 $(GO) test -run '^$$' -fuzz FuzzLeanResponse -fuzztime 30s .

clean:
	rm -f $(BINARY)
