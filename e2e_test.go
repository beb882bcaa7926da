package main

// End-to-end tests against software we did not write: versitygw (a strict
// S3 server with a role session), amazon-ec2-metadata-mock (IMDSv2) and
// nginx, started by scripts/testenv.sh. They build and run the real binary.
// Without the environment they fail and say how to start it, unless
// S3_HELPER_E2E=0.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// e2eEnv is the environment scripts/testenv.sh exported.
type e2eEnv struct {
	dir, data, bucket, region    string
	s3, imds, nginx, nginxHelper string
	akid, secret, token          string
	iamFile, imdsConfig          string
	binary                       string
	// The replica: a bucket behind a second gateway in another region.
	replicaS3, replicaBucket, replicaRegion string
}

// e2eSetup is filled by TestMain when the environment is present.
type e2eSetup struct {
	env     *e2eEnv
	logsDir string
	err     error
}

var e2e e2eSetup // written once by TestMain before any test runs

func TestMain(m *testing.M) {
	if os.Getenv("S3H_E2E_S3_ENDPOINT") != "" {
		e2e.env, e2e.logsDir, e2e.err = prepareE2E()
	}
	code := m.Run()
	if e2e.env != nil && e2e.err == nil {
		if err := scanForSecrets(e2e.env, e2e.logsDir); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: e2e secret scan:", err)
			code = 1
		} else {
			fmt.Fprintln(os.Stderr, "e2e secret scan: no secret key, session token or IMDS token in anything s3-helper printed")
		}
		os.RemoveAll(filepath.Dir(e2e.env.binary))
	}
	os.Exit(code)
}

func prepareE2E() (*e2eEnv, string, error) {
	env := &e2eEnv{
		dir: os.Getenv("S3H_E2E_DIR"), data: os.Getenv("S3H_E2E_DATA"),
		bucket: os.Getenv("S3H_E2E_BUCKET"), region: os.Getenv("S3H_E2E_REGION"),
		s3: os.Getenv("S3H_E2E_S3_ENDPOINT"), imds: os.Getenv("S3H_E2E_IMDS_ENDPOINT"),
		nginx: os.Getenv("S3H_E2E_NGINX_URL"), nginxHelper: os.Getenv("S3H_E2E_HELPER_FOR_NGINX"),
		akid: os.Getenv("S3H_E2E_ACCESS_KEY_ID"), secret: os.Getenv("S3H_E2E_SECRET_ACCESS_KEY"),
		token: os.Getenv("S3H_E2E_SESSION_TOKEN"), iamFile: os.Getenv("S3H_E2E_IAM_FILE"),
		imdsConfig: os.Getenv("S3H_E2E_IMDS_CONFIG"),
		replicaS3:  os.Getenv("S3H_E2E_REPLICA_ENDPOINT"), replicaBucket: os.Getenv("S3H_E2E_REPLICA_BUCKET"),
		replicaRegion: os.Getenv("S3H_E2E_REPLICA_REGION"),
	}
	bin, err := os.MkdirTemp("", "s3-helper-e2e")
	if err != nil {
		return nil, "", err
	}
	env.binary = filepath.Join(bin, "s3-helper")
	build := exec.Command("go", "build", "-o", env.binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return nil, "", fmt.Errorf("build s3-helper: %w", err)
	}
	logs := filepath.Join(env.dir, "helper-logs")
	return env, logs, os.MkdirAll(logs, 0o755)
}

// needE2E returns the environment, or ends the test: skipped only when
// S3_HELPER_E2E=0 says so, failed otherwise.
func needE2E(t *testing.T) *e2eEnv {
	t.Helper()
	switch {
	case e2e.err != nil:
		t.Fatalf("e2e set-up: %v", e2e.err)
	case e2e.env != nil:
		return e2e.env
	case os.Getenv("S3_HELPER_E2E") == "0":
		t.Skip("S3_HELPER_E2E=0: end-to-end tests not run")
	}
	t.Fatal("end-to-end environment not running: use 'make test' (or scripts/testenv.sh run -- go test ./...) " +
		"to start versitygw, the IMDS emulator and nginx; set S3_HELPER_E2E=0 to run unit tests only")
	return nil
}

// helperProcess is a running s3-helper binary.
type helperProcess struct {
	cmd   *exec.Cmd
	addr  string
	admin string
	logs  *syncBuffer
}

// startHelper runs the binary with IMDS as its only credential source.
func startHelper(t *testing.T, env *e2eEnv, listen string, extra ...string) *helperProcess {
	t.Helper()
	return startHelperEnv(t, env, listen, nil, extra...)
}

// startHelperEnv runs the binary with extra environment variables (and
// never the test process's own AWS_* variables).
func startHelperEnv(t *testing.T, env *e2eEnv, listen string, extraEnv []string, extra ...string) *helperProcess {
	t.Helper()
	return startHelperWrapped(t, env, nil, listen, extraEnv, extra...)
}

// startHelperWrapped is startHelperEnv with the binary run by wrap (a
// command line that execs its last arguments), such as a mount namespace.
func startHelperWrapped(t *testing.T, env *e2eEnv, wrap []string, listen string, extraEnv []string, extra ...string) *helperProcess {
	t.Helper()
	args := append([]string{"-listen", listen, "-admin", "127.0.0.1:0", "-log-format", "json", "-access-log",
		"-bucket", env.bucket, "-region", env.region, "-endpoint", env.s3, "-imds-endpoint", env.imds}, extra...)
	h := &helperProcess{logs: &syncBuffer{}}
	logFile, err := os.Create(filepath.Join(e2e.logsDir, strings.ReplaceAll(t.Name(), "/", "_")+".log"))
	if err != nil {
		t.Fatal(err)
	}
	argv := append(append(slices.Clone(wrap), env.binary), args...)
	h.cmd = exec.Command(argv[0], argv[1:]...)
	h.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + env.dir}, extraEnv...) // no inherited AWS_* variables
	h.cmd.Stdout = io.MultiWriter(h.logs, logFile)
	h.cmd.Stderr = io.MultiWriter(h.logs, logFile)
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		err := h.cmd.Wait()
		fmt.Fprintf(h.logs, "%s: %v\n", exitedMarker, err)
		close(exited)
	}()
	t.Cleanup(func() {
		h.cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		logFile.Close()
	})
	h.addr, h.admin = awaitListening(t, h.logs, true)
	// Healthy once the set that signs S3 requests is in: with -assume-role
	// that is the assumed one, which arrives after the base set.
	signing := `"msg":"credentials refreshed"`
	if slices.Contains(extra, "-assume-role") {
		signing = `"source":"assume-role"`
	}
	if _, ok := h.logs.waitUntil(10*time.Second, func(text string) bool {
		return strings.Contains(text, signing) || strings.Contains(text, exitedMarker)
	}); !ok {
		t.Fatalf("s3-helper never fetched credentials:\n%s", h.logs)
	}
	if resp, body := get(t, "GET", "http://"+h.admin+"/healthz", nil); resp.StatusCode != 200 {
		t.Fatalf("s3-helper is not healthy: %d %s\n%s", resp.StatusCode, body, h.logs)
	}
	return h
}

func (h *helperProcess) url(path string) string { return "http://" + h.addr + path }

func readSeed(t *testing.T, env *e2eEnv, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.dir, "seed", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkNoAWSHeaders(t *testing.T, resp *http.Response) {
	t.Helper()
	for name, vs := range resp.Header {
		if strings.HasPrefix(strings.ToLower(name), "x-amz-") || name == "Server" && strings.Contains(strings.Join(vs, ""), "VERSITYGW") {
			t.Errorf("response carries %s: %v", name, vs)
		}
	}
}

func TestE2EObjects(t *testing.T) {
	env := needE2E(t)
	h := startHelper(t, env, "127.0.0.1:0")
	hello, big := readSeed(t, env, "hello.txt"), readSeed(t, env, "big.bin")
	resp, body := get(t, "GET", h.url("/hello.txt"), nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, hello) {
		t.Fatalf("GET hello.txt = %d %q", resp.StatusCode, body)
	}
	checkNoAWSHeaders(t, resp)
	etag := resp.Header.Get("Etag")
	if etag == "" {
		t.Fatal("no ETag from versitygw for an uploaded object")
	}
	n := len(big)
	ranges := []struct {
		name, header string
		want         []byte
		status       int
	}{
		{"first bytes", "bytes=0-4095", big[:4096], 206},
		{"middle", "bytes=262144-524287", big[262144:524288], 206},
		{"last", fmt.Sprintf("bytes=%d-%d", n-100, n-1), big[n-100:], 206},
		{"suffix", "bytes=-777", big[n-777:], 206},
		{"open-ended", "bytes=1048000-", big[1048000:], 206},
		{"past the end", fmt.Sprintf("bytes=%d-", n+10), nil, 416},
	}
	for _, r := range ranges {
		resp, body := get(t, "GET", h.url("/big.bin"), http.Header{"Range": {r.header}})
		if resp.StatusCode != r.status || r.status == 206 && !bytes.Equal(body, r.want) {
			t.Errorf("%s (%s) = %d, %d bytes; want %d, %d bytes", r.name, r.header, resp.StatusCode, len(body), r.status, len(r.want))
		}
		checkNoAWSHeaders(t, resp)
	}
	resp, body = get(t, "HEAD", h.url("/big.bin"), nil)
	if resp.StatusCode != 200 || resp.ContentLength != int64(n) || len(body) != 0 {
		t.Errorf("HEAD = %d, length %d, %d body bytes", resp.StatusCode, resp.ContentLength, len(body))
	}
	if resp, _ := get(t, "GET", h.url("/hello.txt"), http.Header{"If-None-Match": {etag}}); resp.StatusCode != 304 {
		t.Errorf("If-None-Match current ETag = %d, want 304", resp.StatusCode)
	}
	if resp, _ := get(t, "GET", h.url("/hello.txt"), http.Header{"If-Match": {`"0000"`}}); resp.StatusCode != 412 {
		t.Errorf("If-Match other ETag = %d, want 412", resp.StatusCode)
	}
	// versitygw's own error body carries a RequestId; the client gets an
	// S3-shaped body of s3-helper's with S3's code and nothing else of it.
	if resp, body := get(t, "GET", h.url("/no/such/key"), nil); resp.StatusCode != 404 ||
		!bytes.Contains(body, []byte("<Code>NoSuchKey</Code>")) || bytes.Contains(body, []byte("RequestId")) {
		t.Errorf("missing key = %d %q, want 404 with S3's code NoSuchKey in s3-helper's own body", resp.StatusCode, body)
	}
}

func TestE2EUnusualKeys(t *testing.T) {
	env := needE2E(t)
	deep := strings.Repeat("d/", 10) + "leaf.txt"
	long := strings.Repeat(strings.Repeat("k", 199)+"/", 5) // 1000 bytes with the bucket-relative slashes
	long = long[:len(long)-1] + "x"
	keys := []string{"sp ace.txt", "plus+sign.txt", "per%cent.txt", "lit%2Fslash.txt", "tilde~.txt", "(paren).txt",
		"bang!star*quote'.txt", "eq=amp&semi;.txt", "comma,colon:at@dollar$.txt", "hash#question?.txt",
		"é中文😀.txt", deep, long, "back\\slash.txt", "dir with space/file+plus.txt"}
	if len(long) != 1000 {
		t.Fatalf("long key is %d bytes", len(long))
	}
	for i, key := range keys {
		path := filepath.Join(env.data, env.bucket, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, fmt.Appendf(nil, "object %d: %s", i, key), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := startHelper(t, env, "127.0.0.1:0")
	for i, key := range keys {
		resp, body := get(t, "GET", h.url(canonicalURI(key)), nil)
		if want := fmt.Sprintf("object %d: %s", i, key); resp.StatusCode != 200 || string(body) != want {
			t.Errorf("key %q = %d %q, want %q", key, resp.StatusCode, body, want)
		}
	}
}

// rewriteIMDS changes what the emulator serves and waits until it does
// (it re-reads its config within a second). Requests are serial: the
// emulator crashes on concurrent token requests.
func rewriteIMDS(t *testing.T, env *e2eEnv, akid, secret, token string, expires time.Time) {
	t.Helper()
	writeIMDSConfig(t, env, akid, secret, token, expires)
	awaitIMDS(t, env, akid, secret)
}

// awaitIMDS polls the emulator until it serves the set akid names: it
// re-reads its config file on its own schedule.
func awaitIMDS(t *testing.T, env *e2eEnv, akid, secret string) {
	t.Helper()
	client := &imdsClient{endpoint: env.imds, role: "sidecar-role"}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		// Not t.Context(): this also runs in Cleanup, after it is cancelled.
		if c, err := client.Retrieve(context.Background()); err == nil && c.AccessKeyID == akid && c.SecretAccessKey == secret {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("the IMDS emulator did not serve the new credentials within 5 s")
}

func writeJSONAtomic(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// editSessions adds (or, with a zero expiry, removes) a role session in the
// IAM store; versitygw re-reads it on every lookup.
func editSessions(t *testing.T, env *e2eEnv, akid, secret, token string, expires time.Time) {
	t.Helper()
	editJSON(t, env.iamFile, func(store map[string]any) {
		sessions := store["sessions"].(map[string]any)
		if expires.IsZero() {
			delete(sessions, akid)
			return
		}
		s := maps.Clone(sessions[env.akid].(map[string]any))
		s["accessKeyId"], s["secretAccessKey"], s["sessionToken"] = akid, secret, token
		s["expiration"] = expires.UTC().Format(time.RFC3339)
		sessions[akid] = s
	})
}

// editJSON rewrites a JSON file through edit, atomically.
func editJSON(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	edit(v)
	writeJSONAtomic(t, path, v)
}

func restoreIMDS(t *testing.T, env *e2eEnv) {
	t.Cleanup(func() { rewriteIMDS(t, env, env.akid, env.secret, env.token, time.Now().Add(6*time.Hour)) })
}

func TestE2EWrongCredentialsAre403(t *testing.T) {
	env := needE2E(t)
	restoreIMDS(t, env)
	rewriteIMDS(t, env, env.akid, "wrong-secret-0123456789abcdefghijklmnopq", env.token, time.Now().Add(time.Hour))
	h := startHelper(t, env, "127.0.0.1:0")
	resp, body := get(t, "GET", h.url("/hello.txt"), nil)
	if resp.StatusCode != 403 {
		t.Fatalf("GET with a wrong secret = %d %q, want 403", resp.StatusCode, body)
	}
	if !h.logs.waitFor(`"s3_code":"SignatureDoesNotMatch"`) {
		t.Errorf("log does not name SignatureDoesNotMatch:\n%s", h.logs)
	}
}

// TestE2ERotationUnderLoad: clients keep fetching ranges while the role
// session rotates and the old one is revoked; no request fails.
func TestE2ERotationUnderLoad(t *testing.T) {
	env := needE2E(t)
	restoreIMDS(t, env)
	start := time.Now()
	oldAKID, newAKID := "ASIAROTATEOLD0000001", "ASIAROTATENEW0000002"
	// The old set expires at +25 s; the refresher switches between +10 s and
	// +15 s; the new set is served from about +4 s; the old one is revoked
	// at +17 s, and load runs until +27 s.
	editSessions(t, env, oldAKID, "old-secret-0123456789abcdefghijklmnopqrs", "old-token-"+env.token[:20], start.Add(25*time.Second))
	rewriteIMDS(t, env, oldAKID, "old-secret-0123456789abcdefghijklmnopqrs", "old-token-"+env.token[:20], start.Add(25*time.Second))
	h := startHelper(t, env, "127.0.0.1:0", "-refresh-before", "15s")
	big := readSeed(t, env, "big.bin")
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				from := (w*131072 + i*4096) % (len(big) - 262144)
				req, _ := http.NewRequest("GET", h.url("/big.bin"), nil)
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, from+65535))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 206 || !bytes.Equal(body, big[from:from+65536]) {
					failed.Add(1)
					continue
				}
				ok.Add(1)
			}
		})
	}
	time.Sleep(time.Until(start.Add(3 * time.Second)))
	editSessions(t, env, newAKID, "new-secret-0123456789abcdefghijklmnopqrs", "new-token-"+env.token[:20], start.Add(time.Hour))
	// Written, not polled: s3-helper may be asking the emulator right now,
	// and the emulator crashes on concurrent requests.
	writeIMDSConfig(t, env, newAKID, "new-secret-0123456789abcdefghijklmnopqrs", "new-token-"+env.token[:20], start.Add(time.Hour))
	time.Sleep(time.Until(start.Add(17 * time.Second)))
	editSessions(t, env, oldAKID, "", "", time.Time{}) // revoke the old session
	time.Sleep(time.Until(start.Add(27 * time.Second)))
	close(stop)
	wg.Wait()
	t.Logf("rotation under load: %d ranges served, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 || ok.Load() < 100 {
		t.Errorf("%d failed and %d succeeded; want no failure", failed.Load(), ok.Load())
	}
	if !strings.Contains(h.logs.String(), `"access_key_id":"`+newAKID+`"`) {
		t.Errorf("the new session was never used:\n%s", h.logs)
	}
	// The switch must come from the refresher, before the revocation: a
	// forced refetch after S3 rejected the old set would hide a refresher
	// that never runs.
	if strings.Contains(h.logs.String(), "retrying with a fresh set") {
		t.Errorf("S3 rejected the old session: the refresher did not switch in time:\n%s", h.logs)
	}
	editSessions(t, env, newAKID, "", "", time.Time{})
}

// TestE2ERevokedSessionRecovers: a session revoked before its Expiration
// makes versitygw answer InvalidAccessKeyId; s3-helper fetches the new set
// from the emulator and the request still succeeds.
func TestE2ERevokedSessionRecovers(t *testing.T) {
	env := needE2E(t)
	restoreIMDS(t, env)
	const first, second = "ASIAREVOKEFIRST00001", "ASIAREVOKESECOND0002"
	secret, token := "revoke-secret-0123456789abcdefghijklmnop", "revoke-token-"+env.token[:20]
	editSessions(t, env, first, secret, token, time.Now().Add(time.Hour))
	rewriteIMDS(t, env, first, secret, token, time.Now().Add(time.Hour))
	h := startHelper(t, env, "127.0.0.1:0")
	if resp, _ := get(t, "GET", h.url("/hello.txt"), nil); resp.StatusCode != 200 {
		t.Fatalf("GET with the first session = %d", resp.StatusCode)
	}
	editSessions(t, env, second, secret, token, time.Now().Add(time.Hour))
	rewriteIMDS(t, env, second, secret, token, time.Now().Add(time.Hour))
	editSessions(t, env, first, "", "", time.Time{})
	resp, body := get(t, "GET", h.url("/hello.txt"), nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, readSeed(t, env, "hello.txt")) {
		t.Errorf("GET after the revocation = %d %q, want 200", resp.StatusCode, body)
	}
	if !strings.Contains(h.logs.String(), "retrying with a fresh set") || !strings.Contains(h.logs.String(), `"access_key_id":"`+second+`"`) {
		t.Errorf("no forced refresh in the log:\n%s", h.logs)
	}
	editSessions(t, env, second, "", "", time.Time{})
}

func TestE2ENginxInFront(t *testing.T) {
	env := needE2E(t)
	h := startHelper(t, env, env.nginxHelper)
	big := readSeed(t, env, "big.bin")
	for i := range 10 {
		from := i * 100_000
		resp, body := get(t, "GET", env.nginx+"/big.bin", http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", from, from+4095)}})
		if resp.StatusCode != 206 || !bytes.Equal(body, big[from:from+4096]) {
			t.Fatalf("range %d through nginx = %d, %d bytes", i, resp.StatusCode, len(body))
		}
	}
	if resp, _ := get(t, "GET", env.nginx+"/missing.mp4", http.Header{"Authorization": {"Bearer player"}, "Cookie": {"s=1"}}); resp.StatusCode != 404 {
		t.Errorf("missing key through nginx = %d, want 404", resp.StatusCode)
	}
	// nginx reuses its upstream connections: the access log shows one
	// client address for many requests.
	remotes := map[string]int{}
	for line := range strings.SplitSeq(h.logs.String(), "\n") {
		var entry struct{ Msg, Remote string }
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "request" {
			remotes[entry.Remote]++
		}
	}
	reused := false
	for _, n := range remotes {
		reused = reused || n > 1
	}
	if !reused {
		t.Errorf("no upstream connection from nginx served two requests: %v", remotes)
	}
}

func TestE2ESecurity(t *testing.T) {
	env := needE2E(t)
	h := startHelper(t, env, "127.0.0.1:0")
	for _, m := range []string{"PUT", "DELETE", "POST"} {
		if resp, _ := get(t, m, h.url("/hello.txt"), nil); resp.StatusCode != 405 {
			t.Errorf("%s = %d, want 405", m, resp.StatusCode)
		}
	}
	for _, target := range []string{"/", "/?list-type=2", "/?versions"} {
		resp, body := get(t, "GET", h.url(target), nil)
		if resp.StatusCode != 404 || bytes.Contains(body, []byte("hello.txt")) {
			t.Errorf("GET %s = %d %q: a listing must never be served", target, resp.StatusCode, body)
		}
	}
	if resp, _ := get(t, "GET", h.url("/dir/..%2F..%2Fetc/passwd"), nil); resp.StatusCode != 400 {
		t.Errorf("dot-dot escape = %d, want 400", resp.StatusCode)
	}
	// versitygw rejects unsigned x-amz-* headers, so a 200 proves these
	// never reached it.
	resp, body := get(t, "GET", h.url("/hello.txt"), http.Header{
		"Authorization": {"AWS4-HMAC-SHA256 Credential=AKIAEVIL/x"}, "X-Amz-Security-Token": {"evil"},
		"X-Amz-Date": {"20000101T000000Z"}, "X-Amz-Meta-Foo": {"bar"},
	})
	if resp.StatusCode != 200 || !bytes.Equal(body, readSeed(t, env, "hello.txt")) {
		t.Errorf("GET with client AWS headers = %d %q, want 200", resp.StatusCode, body)
	}
	if resp, _ := get(t, "GET", h.url("/hello.txt?acl"), nil); resp.StatusCode != 200 {
		t.Errorf("GET ?acl = %d, want the object (subresource dropped)", resp.StatusCode)
	}
}

// scanForSecrets reads everything s3-helper printed during the run and
// fails if the session secrets or any IMDS token the emulator issued
// appears in it.
func scanForSecrets(env *e2eEnv, logsDir string) error {
	secrets := []string{env.secret, env.token, "old-secret-0123456789abcdefghijklmnopqrs", "new-secret-0123456789abcdefghijklmnopqrs",
		e2eWebIdentityToken, e2eContainerToken, e2eBaseSecret, e2eExpressSecret, e2eExpressToken}
	if raw, err := os.ReadFile(filepath.Join(env.dir, "imds.log")); err == nil {
		for _, m := range regexp.MustCompile(`X-Aws-Ec2-Metadata-Token:\[([^\]]+)\]`).FindAllSubmatch(raw, -1) {
			secrets = append(secrets, string(m[1]))
		}
	}
	files, err := filepath.Glob(filepath.Join(logsDir, "*.log"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no s3-helper output to scan in %s (%v)", logsDir, err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			if len(s) >= 8 && bytes.Contains(raw, []byte(s)) {
				return fmt.Errorf("%s contains a secret (%d bytes, starting %.4s…)", f, len(s), s)
			}
		}
	}
	return nil
}

// TestE2ESoak runs mixed GET/HEAD/Range traffic at 256 connections through
// s3-helper to versitygw for S3H_SOAK (default 2m; 0 skips), rotating the
// role session every 20 s and resetting about 1% of responses mid-body on
// the upstream side. Every body is checked byte for byte.
func TestE2ESoak(t *testing.T) {
	env := needE2E(t)
	duration := 2 * time.Minute
	if v := os.Getenv("S3H_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("S3H_SOAK=%q: %v", v, err)
		}
		duration = d
	}
	if duration == 0 {
		t.Skip("S3H_SOAK=0: soak not run")
	}
	restoreIMDS(t, env)
	big, mp4 := readSeed(t, env, "big.bin"), readSeed(t, env, "sample.mp4")

	// About one response in a hundred is cut: each upstream connection is
	// reset after a random budget averaging 100 responses' worth of bytes.
	const meanResponseBytes = 100 << 10
	var rngMu sync.Mutex
	rng := rand.New(rand.NewPCG(42, 7))
	faulty := newFaultyTCP(t, strings.TrimPrefix(env.s3, "http://"), func(int) int64 {
		rngMu.Lock()
		defer rngMu.Unlock()
		return 1 + int64(rng.ExpFloat64()*100*meanResponseBytes)
	})

	session := func(k int, now time.Time) {
		akid := fmt.Sprintf("ASIASOAK%012d", k)
		secret := fmt.Sprintf("soak-secret-%d-0123456789abcdefghijklmnopq", k)
		token := fmt.Sprintf("soak-token-%d-%s", k, env.token[:16])
		editSessions(t, env, akid, secret, token, now.Add(40*time.Second))
		writeIMDSConfig(t, env, akid, secret, token, now.Add(40*time.Second))
	}
	session(0, time.Now())
	awaitIMDS(t, env, "ASIASOAK000000000000", "soak-secret-0-0123456789abcdefghijklmnopq")
	h := startHelper(t, env, "127.0.0.1:0", "-endpoint", "http://"+faulty.ln.Addr().String(),
		"-refresh-before", "15s", "-access-log=false")
	pid := h.cmd.Process.Pid

	var requests, wrong, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}, Timeout: 30 * time.Second}
	for w := range 256 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 99))
			for {
				select {
				case <-stop:
					return
				default:
				}
				requests.Add(1)
				ok, bad := soakOnce(client, h, r, big, mp4)
				if bad {
					wrong.Add(1)
				} else if !ok {
					failed.Add(1)
				}
			}
		})
	}
	begin := time.Now()
	var rss []float64
	for k := 1; time.Since(begin) < duration; k++ {
		time.Sleep(min(20*time.Second, duration-time.Since(begin)))
		rss = append(rss, vmKiB(pid, "VmRSS:")/1024)
		if time.Since(begin) < duration {
			session(k, time.Now())
		}
	}
	close(stop)
	wg.Wait()
	resumes := strings.Count(h.logs.String(), "resuming upstream body")
	peak := vmKiB(pid, "VmHWM:") / 1024
	t.Logf("soak %v: %d requests, %d resumes after %d upstream resets, %d failed, %d wrong bodies; RSS every 20 s %v MiB, peak %.1f MiB",
		duration, requests.Load(), resumes, faulty.resets.Load(), failed.Load(), wrong.Load(), rss, peak)
	if wrong.Load() != 0 || failed.Load() != 0 {
		t.Errorf("%d wrong bodies and %d failures; want none", wrong.Load(), failed.Load())
	}
	if len(rss) >= 3 && rss[len(rss)-1] > 1.5*rss[1]+16 {
		t.Errorf("memory grew: RSS %v MiB", rss)
	}
	if faulty.resets.Load() == 0 || resumes == 0 {
		t.Errorf("no upstream reset (%d) or resume (%d) happened: the fault injection did not work", faulty.resets.Load(), resumes)
	}
}

// soakOnce makes one random request and checks the answer: ok when it
// succeeded, bad when a body or length was wrong.
func soakOnce(client *http.Client, h *helperProcess, r *rand.Rand, big, mp4 []byte) (ok, bad bool) {
	var req *http.Request
	var want []byte
	switch p := r.IntN(100); {
	case p < 70:
		from := r.IntN(len(big) - 4096)
		to := min(from+4096+r.IntN(256<<10), len(big)) - 1
		req, _ = http.NewRequest("GET", h.url("/big.bin"), nil)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
		want = big[from : to+1]
	case p < 85:
		req, _ = http.NewRequest("GET", h.url("/sample.mp4"), nil)
		want = mp4
	default:
		req, _ = http.NewRequest("HEAD", h.url("/big.bin"), nil)
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, false
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode >= 300 {
		return false, false // visibly failed: never silently wrong
	}
	if req.Method == "HEAD" {
		return true, resp.ContentLength != int64(len(big)) || len(body) != 0
	}
	return true, !bytes.Equal(body, want)
}

// writeIMDSConfig changes what the emulator serves without asking it: the
// soak's s3-helper is talking to it, and the emulator crashes on concurrent
// token requests.
func writeIMDSConfig(t *testing.T, env *e2eEnv, akid, secret, token string, expires time.Time) {
	t.Helper()
	editJSON(t, env.imdsConfig, func(cfg map[string]any) {
		creds := cfg["metadata"].(map[string]any)["values"].(map[string]any)["iam-security-credentials"].(map[string]any)
		creds["AccessKeyId"], creds["SecretAccessKey"], creds["Token"] = akid, secret, token
		creds["Expiration"] = expires.UTC().Format(time.RFC3339)
	})
}

// vmKiB reads a /proc/PID/status field in KiB.
func vmKiB(pid int, field string) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(v), "%f", &kb)
			return kb
		}
	}
	return -1
}

// TestE2ESlowReaderGetsEveryByte: through the real stack, a client that
// stops reading for 2.5× -timeout in the middle of a 48 MiB object receives
// every byte, and s3-helper neither resumes nor aborts: only time spent
// waiting on S3 counts against -timeout.
func TestE2ESlowReaderGetsEveryByte(t *testing.T) {
	env := needE2E(t)
	h := startHelper(t, env, "127.0.0.1:0", "-timeout", "1s")
	large := readSeed(t, env, "large.bin")
	for _, tt := range clientRanges(large, 40000000) {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequestWithContext(t.Context(), "GET", h.url("/large.bin"), nil)
			if tt.rangeHeader != "" {
				req.Header.Set("Range", tt.rangeHeader)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			head := make([]byte, 1<<20)
			if _, err := io.ReadFull(resp.Body, head); err != nil {
				t.Fatalf("first MiB: %v", err)
			}
			time.Sleep(2500 * time.Millisecond) // the paused player
			rest, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("after the pause, read %d more bytes: %v", len(rest), err)
			}
			if got := append(head, rest...); !bytes.Equal(got, tt.want) {
				t.Fatalf("got %d bytes, want %d identical ones", len(got), len(tt.want))
			}
		})
	}
	t.Cleanup(func() {
		for _, word := range []string{"resuming", "stalled", "abort"} {
			if strings.Contains(h.logs.String(), word) {
				t.Errorf("s3-helper log mentions %q after a client pause:\n%s", word, h.logs)
			}
		}
	})
}

// TestE2EConfigErrorExitStatus: the real binary exits 2 on bad flags, with
// every problem in a few lines and no usage dump.
func TestE2EConfigErrorExitStatus(t *testing.T) {
	env := needE2E(t)
	cmd := exec.Command(env.binary, "-timeout", "banana", "-listen", "0.0.0.0:80", "-bucket", "media", "-no-such-flag")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 2 {
		t.Fatalf("exit status %d (%v), want 2:\n%s", code, err, stderr.String())
	}
	for _, want := range []string{`-timeout "banana": must be a duration`, `-listen "0.0.0.0:80"`, "unknown flag -no-such-flag", "-help"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if lines := strings.Count(stderr.String(), "\n"); lines > 6 {
		t.Errorf("stderr has %d lines:\n%s", lines, stderr.String())
	}
}
