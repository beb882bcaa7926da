package main

// End to end, continued: credentials from every source, the real consumers
// of the metrics, and -check against the real stack.

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestE2ECredentialSources: s3-helper started with only the variables ECS,
// EKS Pod Identity or IRSA set (or with -assume-role on top of static
// keys) gets the role session versitygw knows from a stand-in for the
// container endpoint or STS, and serves objects from the strict server,
// which verifies every signature. IMDS is unreachable in every case.
func TestE2ECredentialSources(t *testing.T) {
	env := needE2E(t)
	hello := readSeed(t, env, "hello.txt")
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(e2eContainerToken), 0o600); err != nil {
		t.Fatal(err)
	}
	jwtFile := filepath.Join(dir, "jwt")
	if err := os.WriteFile(jwtFile, []byte(e2eWebIdentityToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	expires := time.Now().Add(time.Hour)
	container := &fakeContainerEndpoint{wantAuth: e2eContainerToken, akid: env.akid, secret: env.secret, token: env.token, expires: expires}
	containerSrv := httptest.NewServer(container)
	t.Cleanup(containerSrv.Close)
	sts := &fakeSTS{wantToken: e2eWebIdentityToken, akid: env.akid, secret: env.secret, token: env.token,
		baseSecrets: map[string]string{"AKIAE2EBASE000000001": e2eBaseSecret}}
	stsSrv := httptest.NewServer(sts)
	t.Cleanup(stsSrv.Close)

	tests := []struct {
		name       string
		env        []string
		args       []string
		wantSource string
	}{
		{"EKS Pod Identity", []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI=" + containerSrv.URL + "/v1/credentials",
			"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=" + tokenFile}, nil, "container (AWS_CONTAINER_CREDENTIALS_FULL_URI is set)"},
		{"ECS-style fixed token", []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI=" + containerSrv.URL + "/v2/credentials/task",
			"AWS_CONTAINER_AUTHORIZATION_TOKEN=" + e2eContainerToken}, nil, "container (AWS_CONTAINER_CREDENTIALS_FULL_URI is set)"},
		{"IRSA", []string{"AWS_WEB_IDENTITY_TOKEN_FILE=" + jwtFile, "AWS_ROLE_ARN=arn:aws:iam::000000000000:role/sidecar-role",
			"AWS_ENDPOINT_URL_STS=" + stsSrv.URL}, nil, "web-identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN are set)"},
		{"AssumeRole on static keys", []string{"AWS_ACCESS_KEY_ID=AKIAE2EBASE000000001", "AWS_SECRET_ACCESS_KEY=" + e2eBaseSecret},
			[]string{"-assume-role", "arn:aws:iam::000000000000:role/sidecar-role", "-external-id", "e2e-external", "-sts-endpoint", stsSrv.URL},
			"assume-role arn:aws:iam::000000000000:role/sidecar-role with environment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-imds-endpoint", "http://127.0.0.1:1"}, tt.args...)
			h := startHelperEnv(t, env, "127.0.0.1:0", tt.env, args...)
			for _, path := range []string{"/hello.txt", "/big.bin"} {
				resp, body := get(t, "GET", h.url(path), http.Header{"Range": {"bytes=0-9"}})
				if resp.StatusCode != 206 || path == "/hello.txt" && !bytes.Equal(body, hello[:10]) {
					t.Fatalf("GET %s = %d %q, want 206 with the object's bytes", path, resp.StatusCode, body)
				}
			}
			if !strings.Contains(h.logs.String(), tt.wantSource) {
				t.Errorf("start-up log does not name %q:\n%s", tt.wantSource, h.logs)
			}
			resp, body := get(t, "GET", "http://"+h.admin+"/healthz", nil)
			if resp.StatusCode != 200 || !strings.Contains(string(body), tt.wantSource) {
				t.Errorf("/healthz = %d %q, want 200 naming %q", resp.StatusCode, body, tt.wantSource)
			}
		})
	}
	var containerRequests int
	container.set(func(f *fakeContainerEndpoint) { containerRequests = f.requests })
	sts.mu.Lock()
	stsCalls := len(sts.calls)
	sts.mu.Unlock()
	if containerRequests == 0 || stsCalls < 2 {
		t.Errorf("stand-ins were not used: container %d requests, STS %d calls", containerRequests, stsCalls)
	}
}

// startCollectd runs Debian's collectd with its statsd plugin on a free UDP
// port and the csv plugin writing to a temporary directory; it returns the
// statsd address and the directory the csv files appear in.
func startCollectd(t *testing.T) (statsdAddr, csvDir string) {
	t.Helper()
	bin, err := exec.LookPath("collectd")
	if err != nil {
		bin = "/usr/sbin/collectd"
	}
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	statsdAddr = udp.LocalAddr().String()
	udp.Close()
	host, port, _ := net.SplitHostPort(statsdAddr)
	dir := t.TempDir()
	conf := fmt.Sprintf(`Hostname "s3h"
FQDNLookup false
Interval 1
BaseDir %[1]q
PIDFile "%[1]s/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin statsd
LoadPlugin csv
<Plugin statsd>
  Host %[2]q
  Port %[3]q
  DeleteCounters false
  DeleteTimers false
  TimerCount true
</Plugin>
<Plugin csv>
  DataDir "%[1]s/csv"
  StoreRates false
</Plugin>
`, dir, host, port)
	if err := os.WriteFile(filepath.Join(dir, "collectd.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "-f", "-C", filepath.Join(dir, "collectd.conf"))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("collectd (apt-get install collectd-core): %v", err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	if !logs.waitFor("Initialization complete") {
		t.Fatalf("collectd did not start:\n%s", logs)
	}
	return statsdAddr, filepath.Join(dir, "csv", "s3h", "statsd")
}

// collectdValue returns the last value collectd recorded for a statsd
// metric of a type (derive for counters, gauge for gauges), or "".
func collectdValue(dir, kind, name string) string {
	files, _ := filepath.Glob(filepath.Join(dir, kind+"-"+name+"-*"))
	if len(files) == 0 {
		return ""
	}
	raw, err := os.ReadFile(files[len(files)-1])
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	_, v, _ := strings.Cut(lines[len(lines)-1], ",")
	return v
}

// TestE2EMetricsConsumers: after known traffic through the real binary,
// Debian's promtool accepts the /metrics output and its counts equal the
// traffic, and Debian's collectd, as the statsd server, recorded exactly
// what was sent.
func TestE2EMetricsConsumers(t *testing.T) {
	env := needE2E(t)
	statsdAddr, csvDir := startCollectd(t)
	h := startHelper(t, env, "127.0.0.1:0", "-statsd", statsdAddr)
	hello := readSeed(t, env, "hello.txt")
	for range 10 {
		if resp, _ := get(t, "GET", h.url("/hello.txt"), nil); resp.StatusCode != 200 {
			t.Fatalf("GET = %d", resp.StatusCode)
		}
	}
	for range 4 {
		get(t, "HEAD", h.url("/hello.txt"), nil)
	}
	for range 3 {
		get(t, "GET", h.url("/missing.mp4"), nil)
	}
	get(t, "BREW", h.url("/hello.txt"), nil)

	resp, body := get(t, "GET", "http://"+h.admin+"/metrics", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics = %d", resp.StatusCode)
	}
	promtool := exec.Command("promtool", "check", "metrics")
	promtool.Stdin = bytes.NewReader(body)
	if out, err := promtool.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s\n--- output checked:\n%s", err, out, body)
	}
	got := promSamples(t, string(body))
	for sample, want := range map[string]string{
		`s3helper_requests_total{method="GET",status="200"}`:   "10",
		`s3helper_requests_total{method="HEAD",status="200"}`:  "4",
		`s3helper_requests_total{method="GET",status="404"}`:   "3",
		`s3helper_requests_total{method="other",status="405"}`: "1",
		`s3helper_response_body_bytes_total`:                   fmt.Sprint(10 * len(hello)),
		`s3helper_s3_errors_total{code="NoSuchKey"}`:           "3",
		`s3helper_request_duration_seconds_count`:              "18",
		`s3helper_credential_refreshes_total`:                  "1",
	} {
		if got[sample] != want {
			t.Errorf("/metrics %s = %q, want %s", sample, got[sample], want)
		}
	}

	want := map[string]string{
		"s3helper.requests.GET.200":             "10",
		"s3helper.requests.HEAD.200":            "4",
		"s3helper.requests.GET.404":             "3",
		"s3helper.requests.other.405":           "1",
		"s3helper.bytes_out":                    fmt.Sprint(10 * len(hello)),
		"s3helper.upstream.s3_errors.NoSuchKey": "3",
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		missing := map[string]string{}
		for name, v := range want {
			if got := collectdValue(csvDir, "derive", name); got != v {
				missing[name] = got
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			files, _ := filepath.Glob(filepath.Join(csvDir, "*"))
			t.Fatalf("collectd recorded %v (want %v); files: %v", missing, want, files)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// runCheck runs the real binary with -check and returns its output and
// exit status.
func runCheckBinary(t *testing.T, env *e2eEnv, extraEnv []string, args ...string) (string, int) {
	t.Helper()
	all := append([]string{"-check", "-listen", "127.0.0.1:0", "-bucket", env.bucket, "-region", env.region,
		"-endpoint", env.s3, "-imds-endpoint", env.imds}, args...)
	cmd := exec.Command(env.binary, all...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + env.dir}, extraEnv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Run()
	logFile := filepath.Join(e2e.logsDir, strings.ReplaceAll(t.Name(), "/", "_")+".log")
	os.WriteFile(logFile, out.Bytes(), 0o644) // scanned for secrets at the end
	return out.String(), cmd.ProcessState.ExitCode()
}

// TestE2ECheck: -check against the local stack passes every step on the
// healthy stack, and each broken set-up fails exactly the right step with
// its fix and exit status 1.
func TestE2ECheck(t *testing.T) {
	env := needE2E(t)
	out, code := runCheckBinary(t, env, nil, "-check-key", "/hello.txt")
	t.Logf("healthy stack:\n%s", out)
	if code != 0 || strings.Contains(out, "FAIL") || strings.Contains(out, "WARN") {
		t.Errorf("healthy stack: exit %d:\n%s", code, out)
	}
	for _, want := range []string{"PASS  configuration", "PASS  credentials: imds " + env.imds, "PASS  bucket media", "PASS  clock",
		"PASS  permissions on media: a missing key is 404", "PASS  read /hello.txt"} {
		if !strings.Contains(out, want) {
			t.Errorf("healthy stack: no %q:\n%s", want, out)
		}
	}

	broken := []struct {
		name  string
		args  []string
		setup func()
		want  []string
	}{
		{"missing bucket", []string{"-bucket", "no-such-bucket-e2e"}, nil,
			[]string{"FAIL  bucket no-such-bucket-e2e: S3 answered 404 NoSuchBucket", "fix: check -bucket"}},
		{"dead IMDS", []string{"-imds-endpoint", "http://127.0.0.1:1"}, nil,
			[]string{"FAIL  credentials: imds http://127.0.0.1:1", "fix: attach an instance profile"}},
		{"region mismatch", []string{"-region", "eu-west-1"}, nil,
			[]string{"FAIL  bucket media: S3 answered 400 AuthorizationHeaderMalformed: the bucket is not in -region eu-west-1", "fix: set -region"}},
		{"wrong secret", nil, func() {
			rewriteIMDS(t, env, env.akid, "wrong-secret-0123456789abcdefghijklmnopq", env.token, time.Now().Add(time.Hour))
		}, []string{"FAIL  bucket media: S3 answered 403 SignatureDoesNotMatch", "fix: check the credential source"}},
	}
	for _, tt := range broken {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				restoreIMDS(t, env)
				tt.setup()
			}
			out, code := runCheckBinary(t, env, nil, tt.args...)
			t.Logf("%s:\n%s", tt.name, out)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			for _, want := range tt.want {
				if !strings.Contains(out, want) {
					t.Errorf("no %q:\n%s", want, out)
				}
			}
			if n := strings.Count(out, "FAIL"); n != 1 {
				t.Errorf("%d steps failed, want exactly 1:\n%s", n, out)
			}
		})
	}
}

// Secrets the credential stand-ins use; the secret scan looks for them too.
const (
	e2eWebIdentityToken = "eyJhbGciOiJSUzI1NiJ9.e2e-web-identity-token.c2lnbmF0dXJl"
	e2eContainerToken   = "e2e-pod-identity-token-0123456789abcdef"
	e2eBaseSecret       = "e2e-base-secret/0123456789abcdefghijklmn"
)
