package main

// The OCI image as a registry and a runtime see it: make image's archive,
// built twice from one commit, has one digest (and is one file); skopeo
// reads its labels and config; umoci unpacks it; the unpacked root holds
// the binary, the CA bundle and the licence and nothing else; and the
// binary, run from that root under chroot as the image's user, serves an
// object from the test S3 server.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// maxImageBytes bounds the image: the archive, and the unpacked root.
	maxImageBytes = 12_000_000
	// imageUser is the image's user and group.
	imageUser = "65532:65532"
	// imageEntrypoint is where the binary sits in the image.
	imageEntrypoint = "/usr/bin/s3-helper"
)

// imageInspect is what skopeo inspect says of an image.
type imageInspect struct {
	Digest       string
	Created      time.Time
	Labels       map[string]string
	Architecture string
	Os           string
	Layers       []string
}

// imageConfig is the part of the OCI image config the test reads.
type imageConfig struct {
	Created time.Time
	Config  struct {
		User       string
		Entrypoint []string
		Cmd        []string
		Env        []string
		Labels     map[string]string
	}
}

func TestE2EImage(t *testing.T) {
	env := needE2E(t)
	needTools(t, "buildah", "skopeo", "umoci", "chroot", "tar", "git")
	if os.Geteuid() != 0 {
		t.Fatal("building the image (buildah) and running its root (chroot) need root, as the suite runs")
	}
	first, second := buildImage(t), buildImage(t)
	archive := "oci-archive:" + first
	var info imageInspect
	skopeoJSON(t, &info, "inspect", archive)
	var again imageInspect
	skopeoJSON(t, &again, "inspect", "oci-archive:"+second)
	t.Logf("image %s: %s, %d bytes", filepath.Base(first), info.Digest, fileSize(t, first))
	if info.Digest == "" || info.Digest != again.Digest {
		t.Errorf("two builds of one commit gave digests %q and %q, want one", info.Digest, again.Digest)
	}
	if a, b := fileSHA256(t, first), fileSHA256(t, second); a != b {
		t.Errorf("two builds of one commit gave archives with SHA-256 %s and %s, want one file", a, b)
	}
	if n := fileSize(t, first); n > maxImageBytes {
		t.Errorf("the archive is %d bytes, want at most %d", n, maxImageBytes)
	}

	// Labels: what the registry shows.
	commit := strings.TrimSpace(run1(t, "git", "rev-parse", "HEAD"))
	commitTime := strings.TrimSpace(run1(t, "git", "log", "-1", "--format=%ct"))
	wantLabels := map[string]string{
		"org.opencontainers.image.version":  releaseVersion,
		"org.opencontainers.image.revision": commit,
		"org.opencontainers.image.licenses": spdxOfCopyright(t),
	}
	for name, want := range wantLabels {
		if got := info.Labels[name]; got != want {
			t.Errorf("label %s = %q, want %q", name, got, want)
		}
	}
	if src := info.Labels["org.opencontainers.image.source"]; !strings.HasPrefix(src, "https://") {
		t.Errorf("label org.opencontainers.image.source = %q, want an https:// URL", src)
	}
	if got := fmt.Sprint(info.Created.Unix()); got != commitTime {
		t.Errorf("image created %v (%s), want the commit's time %s", info.Created, got, commitTime)
	}
	if len(info.Layers) != 1 || info.Os != "linux" {
		t.Errorf("image: %d layers, os %q; want one layer, linux", len(info.Layers), info.Os)
	}
	var config imageConfig
	skopeoJSON(t, &config, "inspect", "--config", archive)
	if config.Config.User != imageUser || !slices.Equal(config.Config.Entrypoint, []string{imageEntrypoint}) || len(config.Config.Cmd) != 0 {
		t.Errorf("config: user %q, entrypoint %q, cmd %q; want %s, [%s], none", config.Config.User, config.Config.Entrypoint, config.Config.Cmd, imageUser, imageEntrypoint)
	}

	// Unpacked as a runtime would: umoci turns the image into a root and a
	// runtime config.
	layout := filepath.Join(t.TempDir(), "layout")
	os.MkdirAll(layout, 0o755)
	run1(t, "tar", "-xf", first, "-C", layout)
	bundle := filepath.Join(t.TempDir(), "bundle")
	run1(t, "umoci", "unpack", "--image", layout+":s3-helper:"+releaseVersion, bundle)
	var runtime struct {
		Process struct {
			User struct{ UID, GID int }
			Args []string
		}
	}
	raw, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil || json.Unmarshal(raw, &runtime) != nil {
		t.Fatalf("umoci's config.json: %v\n%s", err, raw)
	}
	if got := fmt.Sprintf("%d:%d", runtime.Process.User.UID, runtime.Process.User.GID); got != imageUser || !slices.Equal(runtime.Process.Args, []string{imageEntrypoint}) {
		t.Errorf("runtime config: user %s, args %q; want %s, [%s]", got, runtime.Process.Args, imageUser, imageEntrypoint)
	}
	rootfs := filepath.Join(bundle, "rootfs")
	checkImageRoot(t, rootfs)

	// Run from the unpacked root as the image's user.
	userspec := fmt.Sprintf("%d:%d", runtime.Process.User.UID, runtime.Process.User.GID)
	args := append([]string{"--userspec", userspec, rootfs}, runtime.Process.Args...)
	args = append(args, "-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0", "-log-format", "json", "-access-log",
		"-bucket", env.bucket, "-region", env.region, "-endpoint", env.s3, "-imds-endpoint", env.imds)
	cmd := exec.Command("chroot", args...)
	cmd.Env = []string{} // nothing from the test's environment
	logs := &syncBuffer{}
	logFile, err := os.Create(filepath.Join(e2e.logsDir, "TestE2EImage.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = io.MultiWriter(logs, logFile), io.MultiWriter(logs, logFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{}) // closed once waitErr is set
	go func() {
		waitErr = cmd.Wait()
		fmt.Fprintf(logs, "%s: %v\n", exitedMarker, waitErr)
		close(exited)
	}()
	defer func() {
		cmd.Process.Kill() // if it still runs
		<-exited
	}()
	addr, admin := awaitListening(t, logs, true)
	if uid := processUIDs(t, cmd.Process.Pid); uid != "65532 65532 65532 65532" {
		t.Errorf("the image's binary runs with uids %q, want 65532 (real, effective, saved, file system)", uid)
	}
	if _, ok := logs.waitUntil(10*time.Second, func(text string) bool {
		return strings.Contains(text, `"msg":"credentials refreshed"`) || strings.Contains(text, exitedMarker)
	}); !ok {
		t.Fatalf("no credentials from IMDS:\n%s", logs)
	}
	resp, body := get(t, "GET", "http://"+addr+"/hello.txt", nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, readSeed(t, env, "hello.txt")) {
		t.Errorf("GET /hello.txt through the image's binary = %d %q", resp.StatusCode, body)
	}
	if resp, body := get(t, "GET", "http://"+admin+"/healthz", nil); resp.StatusCode != 200 {
		t.Errorf("/healthz = %d %s", resp.StatusCode, body)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	<-exited
	if waitErr != nil {
		t.Errorf("exit after SIGTERM: %v, want status 0\n%s", waitErr, logs)
	}
}

// buildImage runs make image's script into a directory of its own and
// returns the archive.
func buildImage(t *testing.T) string {
	t.Helper()
	out, archive := runPackaging(t, "packaging/build-image.sh")
	if want := filepath.Join(out, "s3-helper_"+releaseVersion+"_oci.tar"); archive != want {
		t.Fatalf("archive %s, want %s", archive, want)
	}
	return archive
}

// checkImageRoot: the root holds the binary, the CA bundle and the
// licence, owned by root and not writable by the image's user, and
// nothing else; it fits maxImageBytes.
func checkImageRoot(t *testing.T, rootfs string) {
	t.Helper()
	want := map[string]fs.FileMode{
		"usr/bin/s3-helper":                 0o755,
		"etc/ssl/certs/ca-certificates.crt": 0o644,
		"usr/share/doc/s3-helper/copyright": 0o644,
	}
	var total int64
	err := filepath.WalkDir(rootfs, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(rootfs, path)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s is owned by %d:%d, want root", rel, st.Uid, st.Gid)
		}
		if d.IsDir() {
			return nil
		}
		total += fi.Size()
		mode, ok := want[rel]
		switch {
		case !ok:
			t.Errorf("the image holds %s, which it should not", rel)
		case fi.Mode() != mode:
			t.Errorf("%s has mode %v, want %v", rel, fi.Mode(), mode)
		}
		delete(want, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for missing := range want {
		t.Errorf("the image lacks %s", missing)
	}
	t.Logf("unpacked root: %d bytes", total)
	if total > maxImageBytes {
		t.Errorf("the unpacked root is %d bytes, want at most %d", total, maxImageBytes)
	}
	licence, _ := os.ReadFile(filepath.Join(rootfs, "usr/share/doc/s3-helper/copyright"))
	if source, _ := os.ReadFile("packaging/copyright"); len(source) == 0 || !bytes.Equal(licence, source) {
		t.Error("the image's licence differs from packaging/copyright")
	}
	bundle, _ := os.ReadFile(filepath.Join(rootfs, "etc/ssl/certs/ca-certificates.crt"))
	if n := bytes.Count(bundle, []byte("-----BEGIN CERTIFICATE-----")); n < 100 {
		t.Errorf("the CA bundle holds %d certificates, want Debian's (over 100)", n)
	}
}

// spdxOfCopyright is the licenses label the copyright file calls for: its
// License: names joined with AND, a name SPDX does not list as a
// LicenseRef-.
func spdxOfCopyright(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("packaging/copyright")
	if err != nil {
		t.Fatal(err)
	}
	spdx := map[string]bool{"BSD-3-Clause": true}
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^License: (\S+)$`).FindAllSubmatch(raw, -1) {
		name := string(m[1])
		if !spdx[name] {
			name = "LicenseRef-" + name
		}
		names = append(names, name)
	}
	if len(names) == 0 {
		t.Fatal("packaging/copyright names no licence")
	}
	return strings.Join(names, " AND ")
}

// processUIDs is the Uid line of /proc/PID/status: real, effective, saved
// and file system uids.
func processUIDs(t *testing.T, pid int) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if uids, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			return strings.Join(strings.Fields(uids), " ")
		}
	}
	return ""
}

// skopeoJSON runs skopeo with args and decodes its JSON into v.
func skopeoJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	if err := json.Unmarshal([]byte(run1(t, "skopeo", args...)), v); err != nil {
		t.Fatalf("skopeo %s: %v", strings.Join(args, " "), err)
	}
}

// run1 runs a command and returns its standard output, failing the test
// with its standard error.
func run1(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}
