package main

// The Debian package as Debian's tools see it: make deb's package passes
// lintian with no error or warning, carries the release version, the
// conffile and the man page, and its units pass systemd-analyze verify;
// systemd-analyze security rates the service.

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPackage(t *testing.T) {
	needE2E(t) // the suite's machine has Debian's dpkg-dev, lintian, help2man and systemd
	out, deb := runPackaging(t, "packaging/build-deb.sh")
	if want := filepath.Join(out, "s3-helper_"+releaseVersion+"_amd64.deb"); deb != want && !strings.HasSuffix(deb, "_"+releaseVersion+"_arm64.deb") {
		t.Errorf("package %s, want %s", deb, want)
	}

	lint := exec.Command("lintian", "--fail-on", "error,warning", deb)
	report, err := lint.CombinedOutput()
	if err != nil || regexp.MustCompile(`(?m)^[EW]: `).Match(report) {
		t.Errorf("lintian: %v\n%s", err, report)
	}
	t.Logf("lintian:\n%s", report)

	info, err := exec.Command("dpkg-deb", "--info", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Package: s3-helper", "Version: " + releaseVersion, "conffiles", "Depends: systemd"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	conffiles, _ := exec.Command("dpkg-deb", "--ctrl-tarfile", deb).Output()
	if !bytes.Contains(conffiles, []byte("/etc/default/s3-helper")) {
		t.Error("/etc/default/s3-helper is not a conffile")
	}

	root := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v\n%s", err, out)
	}
	for _, f := range []string{"usr/bin/s3-helper", "lib/systemd/system/s3-helper.service", "lib/systemd/system/s3-helper.socket",
		"lib/systemd/system/s3-helper-admin.socket", "etc/default/s3-helper", "usr/share/man/man1/s3-helper.1.gz",
		"usr/share/doc/s3-helper/copyright", "usr/share/doc/s3-helper/changelog.gz"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("the package lacks %s", f)
		}
	}
	// verify checks the units against a root holding the package and
	// systemd's own units (the targets they name).
	if out, err := exec.Command("cp", "-an", "/lib/systemd/system", filepath.Join(root, "lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	verify := exec.Command("systemd-analyze", "verify", "--root="+root,
		"/lib/systemd/system/s3-helper.socket", "/lib/systemd/system/s3-helper.service", "/lib/systemd/system/s3-helper-admin.socket")
	verify.Env = append(os.Environ(), "MANPATH="+filepath.Join(root, "usr/share/man"))
	if out, err := verify.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	security, err := exec.Command("systemd-analyze", "security", "--offline=yes", "--root="+root, "/lib/systemd/system/s3-helper.service").CombinedOutput()
	level := regexp.MustCompile(`Overall exposure level for s3-helper.service: ([0-9.]+)`).FindSubmatch(security)
	if err != nil || level == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, security)
	}
	t.Logf("systemd-analyze security: exposure %s", level[1])
	if exposure, _ := strconv.ParseFloat(string(level[1]), 64); exposure > 2.0 {
		t.Errorf("exposure level %s, want at most 2.0 (OK):\n%s", level[1], security)
	}
}

// runPackaging runs a packaging script into a directory of its own and
// returns the directory and the path the script printed.
func runPackaging(t *testing.T, script string) (dir, built string) {
	t.Helper()
	dir = t.TempDir()
	cmd := exec.Command(script, dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	return dir, strings.TrimSpace(string(out))
}

// TestDefaultFileNamesRealFlags: every S3_HELPER_* variable that
// /etc/default/s3-helper shows is one the flags read, and so is every
// variable the unit files set.
func TestDefaultFileNamesRealFlags(t *testing.T) {
	fs := newFlagSet(&config{}, io.Discard)
	for _, file := range []string{"packaging/s3-helper.default", "packaging/s3-helper.service"} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		found := 0
		for _, m := range regexp.MustCompile(`S3_HELPER_([A-Z_]+)=`).FindAllSubmatch(raw, -1) {
			found++
			name := strings.ToLower(strings.ReplaceAll(string(m[1]), "_", "-"))
			if fs.Lookup(name) == nil {
				t.Errorf("%s: S3_HELPER_%s names no flag (-%s)", file, m[1], name)
			}
		}
		if file == "packaging/s3-helper.default" && found < 10 {
			t.Errorf("%s shows only %d variables", file, found)
		}
	}
}

// stopMargin is how much longer than -shutdown-timeout a service manager
// must wait before it kills s3-helper: after the drain's deadline the cut
// requests get a second to be logged, then the admin listener and the
// outputs close.
const stopMargin = 10 * time.Second

// TestStopTimeoutsAgree: the unit's TimeoutStopSec= leaves the drain its
// -shutdown-timeout (the flag's default, and the value
// /etc/default/s3-helper shows) plus stopMargin, so systemd's SIGKILL never
// lands mid-drain; and each file says so where an operator changes its
// value.
func TestStopTimeoutsAgree(t *testing.T) {
	unit, err := os.ReadFile("packaging/s3-helper.service")
	if err != nil {
		t.Fatal(err)
	}
	defaults, err := os.ReadFile("packaging/s3-helper.default")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindSubmatch(unit)
	if m == nil {
		t.Fatal("packaging/s3-helper.service sets no TimeoutStopSec=")
	}
	stop, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatalf("TimeoutStopSec=%s: want a value in s, such as 45s: %v", m[1], err)
	}
	flagDefault, err := time.ParseDuration(newFlagSet(&config{}, io.Discard).Lookup("shutdown-timeout").DefValue)
	if err != nil {
		t.Fatal(err)
	}
	m = regexp.MustCompile(`(?m)^#?S3_HELPER_SHUTDOWN_TIMEOUT=(\S+)$`).FindSubmatch(defaults)
	if m == nil {
		t.Fatal("packaging/s3-helper.default does not show S3_HELPER_SHUTDOWN_TIMEOUT")
	}
	shown, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	if shown != flagDefault {
		t.Errorf("/etc/default/s3-helper shows S3_HELPER_SHUTDOWN_TIMEOUT=%v, the flag's default is %v", shown, flagDefault)
	}
	if stop < max(shown, flagDefault)+stopMargin {
		t.Errorf("TimeoutStopSec=%v, want at least -shutdown-timeout %v plus %v: systemd would kill the drain", stop, max(shown, flagDefault), stopMargin)
	}
	// Where an operator changes one, the other is named.
	if !regexp.MustCompile(`(?m)^#.*S3_HELPER_SHUTDOWN_TIMEOUT[^\n]*\n(#[^\n]*\n)*TimeoutStopSec=`).Match(unit) {
		t.Error("the comment above TimeoutStopSec= does not name S3_HELPER_SHUTDOWN_TIMEOUT")
	}
	if !regexp.MustCompile(`(?m)^#.*TimeoutStopSec=[^\n]*\n(#[^\n]*\n)*#S3_HELPER_SHUTDOWN_TIMEOUT=`).Match(defaults) {
		t.Error("the comment above S3_HELPER_SHUTDOWN_TIMEOUT does not name TimeoutStopSec=")
	}
}

// TestSetupPackagesAgree: the README's apt-get line installs exactly the
// Debian packages scripts/testenv.sh installs for the suite (and CI), so a
// machine set up by hand runs the same tests.
func TestSetupPackagesAgree(t *testing.T) {
	script, err := os.ReadFile("scripts/testenv.sh")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^APT_PACKAGES=\(([^)]*)\)$`).FindSubmatch(script)
	if m == nil {
		t.Fatal("scripts/testenv.sh has no APT_PACKAGES=(...) line")
	}
	fromScript := strings.Fields(string(m[1]))
	m = regexp.MustCompile(`(?m)^apt-get update && apt-get install -y --no-install-recommends (.*)$`).FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no apt-get install line")
	}
	fromREADME := strings.Fields(string(m[1]))
	slices.Sort(fromScript)
	slices.Sort(fromREADME)
	if !slices.Equal(fromScript, fromREADME) {
		t.Errorf("README installs %v, scripts/testenv.sh %v", fromREADME, fromScript)
	}
	for _, p := range []string{"buildah", "skopeo", "umoci", "prometheus"} {
		if !slices.Contains(fromScript, p) {
			t.Errorf("APT_PACKAGES lacks %s, which the suite's image and rule tests need", p)
		}
	}
}
