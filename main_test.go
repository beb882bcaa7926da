package main

// The daemon in-process: graceful shutdown, health, Unix sockets, one failing
// server stopping the other, client abuse, and the demo script's port check.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestGracefulShutdownDrains: on a signal, a response in flight completes
// and the process exits cleanly.
func TestGracefulShutdownDrains(t *testing.T) {
	f, srv := newFakeS3(t)
	f.put("slow.mp4", bytes.Repeat([]byte("s"), 64<<10))
	release, entered := make(chan struct{}), make(chan struct{})
	f.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		close(entered)
		w.Header().Set("Content-Length", "10")
		w.WriteHeader(200)
		w.Write([]byte("01234"))
		w.(http.Flusher).Flush()
		<-release
		w.Write([]byte("56789"))
		return true
	}
	d := startDaemon(t, []string{"-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL, "-admin", "127.0.0.1:0"}, staticEnv())
	type result struct {
		body []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + d.addr + "/slow.mp4")
		if err != nil {
			got <- result{nil, err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- result{body, err}
	}()
	<-entered // the request is in flight
	d.stop()  // SIGTERM
	if !d.logs.waitFor(`"msg":"stopped accepting","server":"proxy"`) {
		t.Fatalf("the proxy never stopped accepting:\n%s", d.logs)
	}
	if _, err := net.DialTimeout("tcp", d.addr, time.Second); err == nil {
		t.Error("still accepting connections after the signal")
	}
	close(release)
	if r := <-got; r.err != nil || string(r.body) != "0123456789" {
		t.Errorf("in-flight response = %q, %v; want it completed", r.body, r.err)
	}
	if err := <-d.done; err != nil {
		t.Errorf("run = %v, want a clean exit", err)
	}
	for _, want := range []string{`"msg":"shutting down"`, `"msg":"stopped"`} {
		if !strings.Contains(d.logs.String(), want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

func TestHealthzAndAdminSeparation(t *testing.T) {
	_, srv := newFakeS3(t)
	d := startDaemon(t, []string{"-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL, "-admin", "127.0.0.1:0", "-pprof"}, staticEnv())
	resp, body := get(t, "GET", "http://"+d.admin+"/healthz", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "ok: credentials from environment") {
		t.Errorf("/healthz = %d %q", resp.StatusCode, body)
	}
	if resp, _ := get(t, "GET", "http://"+d.admin+"/debug/pprof/", nil); resp.StatusCode != 200 {
		t.Errorf("/debug/pprof/ = %d with -pprof", resp.StatusCode)
	}
	// On the proxy port /healthz is just an object key.
	if resp, _ := get(t, "GET", "http://"+d.addr+"/healthz", nil); resp.StatusCode != 404 {
		t.Errorf("proxy /healthz = %d, want S3's 404 for that key", resp.StatusCode)
	}
}

func TestHealthzUnhealthyWithoutIMDS(t *testing.T) {
	_, srv := newFakeS3(t)
	d := startDaemon(t, []string{"-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL,
		"-admin", "127.0.0.1:0", "-imds-endpoint", "http://127.0.0.1:1"}, nil)
	if !d.logs.waitFor("credential refresh failed") {
		t.Fatalf("no log line names the credential failure:\n%s", d.logs)
	}
	resp, body := get(t, "GET", "http://"+d.admin+"/healthz", nil)
	if resp.StatusCode != 503 || !strings.Contains(string(body), "no credentials yet") {
		t.Errorf("/healthz = %d %q, want 503 naming the cause", resp.StatusCode, body)
	}
	if resp, body := get(t, "GET", "http://"+d.addr+"/k", nil); resp.StatusCode != 503 {
		t.Errorf("GET without credentials = %d %q, want 503", resp.StatusCode, body)
	}
	if !strings.Contains(d.logs.String(), "credential refresh failed") {
		t.Errorf("no log line names the credential failure:\n%s", d.logs)
	}
}

func TestUnixSocketListener(t *testing.T) {
	f, srv := newFakeS3(t)
	f.put("k", []byte("over a unix socket"))
	sock := filepath.Join(t.TempDir(), "s3-helper.sock")
	os.WriteFile(sock, nil, 0o600) // a regular file is never removed
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-listen", "unix:" + sock, "-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL}, envFrom(staticEnv()), io.Discard, io.Discard)
	}()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("run over a regular file = %v, want a bind error", err)
	}
	os.Remove(sock)
	d := startDaemon(t, []string{"-listen", "unix:" + sock, "-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL}, staticEnv())
	if d.addr != sock {
		t.Errorf("listening on %q, want %q", d.addr, sock)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := client.Get("http://unix/k")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "over a unix socket" {
		t.Errorf("body = %q", body)
	}
}

// TestUnixSocketNotTakenOver: a second s3-helper on a socket another one
// serves is refused, naming the socket; when the first stops, the socket
// file goes with it; a stale one left by a killed process is replaced.
func TestUnixSocketNotTakenOver(t *testing.T) {
	_, srv := newFakeS3(t)
	sock := filepath.Join(t.TempDir(), "s3-helper.sock")
	args := []string{"-listen", "unix:" + sock, "-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL}
	first := startDaemon(t, args, staticEnv())
	err := run(t.Context(), args, envFrom(staticEnv()), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "another process serves the socket "+sock) {
		t.Fatalf("a second s3-helper on a served socket = %v, want it refused", err)
	}
	if conn, err := net.Dial("unix", sock); err != nil {
		t.Fatalf("the first s3-helper lost its socket: %v", err)
	} else {
		conn.Close()
	}
	first.stop()
	<-first.done
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket file outlived its s3-helper: %v", err)
	}
	stale, err := net.Listen("unix", sock) // a process killed with its socket left behind
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	startDaemon(t, args, staticEnv())
}

// TestOwnedSocketKeepsAReplacement: a socket file that another process
// replaced is not removed when the old listener closes.
func TestOwnedSocketKeepsAReplacement(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	owned := ownSocket(ln.(*net.UnixListener), sock)
	os.Remove(sock)
	other, err := net.Listen("unix", sock) // the replacement
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	owned.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("closing the old listener removed the replacement's socket: %v", err)
	}
}

func TestVersionAndPresign(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"-version"}, envFrom(nil), &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "s3-helper "+releaseVersion) {
		t.Errorf("-version = %q, %v", out.String(), err)
	}
	out.Reset()
	err := run(t.Context(), []string{"-bucket", "media", "-region", "eu-west-1", "-presign", "a b.mp4", "-presign-expires", "5m"},
		envFrom(staticEnv()), &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	u := strings.TrimSpace(out.String())
	for _, want := range []string{"https://media.s3.eu-west-1.amazonaws.com/a%20b.mp4?", "X-Amz-Expires=300", "X-Amz-Security-Token=", "X-Amz-Signature="} {
		if !strings.Contains(u, want) {
			t.Errorf("presigned URL %q lacks %q", u, want)
		}
	}
	if strings.Contains(u, testSecret) {
		t.Error("presigned URL contains the secret key")
	}
}

func TestLoopbackIPv6AndRemoteRefused(t *testing.T) {
	_, srv := newFakeS3(t)
	args := []string{"-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL}
	if _, err := net.Listen("tcp", "[::1]:0"); err == nil {
		d := startDaemon(t, append(args, "-listen", "[::1]:0"), staticEnv())
		if !strings.HasPrefix(d.addr, "[::1]:") {
			t.Errorf("listening on %s, want [::1]", d.addr)
		}
	} else {
		t.Log("no IPv6 loopback on this machine: [::1] listening not exercised")
	}
	for _, addr := range []string{"[::]:0", "0.0.0.0:0", ":0", "192.0.2.1:80"} {
		err := run(t.Context(), append(args, "-listen", addr), envFrom(staticEnv()), io.Discard, io.Discard)
		if !strings.Contains(fmt.Sprint(err), "not a loopback address") {
			t.Errorf("-listen %s: %v, want a refusal", addr, err)
		}
	}
}

// TestClientAbuse: slow header senders are cut, oversize headers get 431,
// and thousands of idle keep-alive connections do not starve a new one.
func TestClientAbuse(t *testing.T) {
	f, srv := newFakeS3(t)
	f.put("k", []byte("ok"))
	d := startDaemon(t, []string{"-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL, "-read-header-timeout", "200ms"}, staticEnv())

	slow, err := net.Dial("tcp", d.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprint(slow, "GET /k HTTP/1.1\r\nHost: x\r\n") // and never the blank line
	// Our own deadline is far beyond -read-header-timeout: reaching it
	// means the server kept the connection; EOF means the server cut it.
	slow.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadAll(slow); err != nil {
		t.Errorf("slow header sender: %v; want the server to close the connection at -read-header-timeout", err)
	}

	resp, _ := get(t, "GET", "http://"+d.addr+"/k", http.Header{"X-Big": {strings.Repeat("b", 40<<10)}})
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("40 KiB header = %d, want 431", resp.StatusCode)
	}

	const idle = 2000
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range idle {
		c, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatalf("after %d idle connections: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns[:100] { // some have served a request and are idle in keep-alive
		fmt.Fprint(c, "GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	resp, body := get(t, "GET", "http://"+d.addr+"/k", nil)
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Errorf("new request beside %d idle connections = %d %q", idle, resp.StatusCode, body)
	}
}

// TestShutdownUnderLoad: on SIGTERM every request started before the
// signal completes.
func TestShutdownUnderLoad(t *testing.T) {
	f, srv := newFakeS3(t)
	f.put("k", bytes.Repeat([]byte("z"), 100_000))
	var entered sync.WaitGroup
	const clients = 50
	entered.Add(clients)
	release := make(chan struct{})
	f.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		entered.Done()
		<-release // S3 answers only once the shutdown has begun
		return false
	}
	d := startDaemon(t, []string{"-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL}, staticEnv())
	var ok atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			resp, err := http.Get("http://" + d.addr + "/k")
			if err != nil {
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 && len(body) == 100_000 {
				ok.Add(1)
			}
		})
	}
	entered.Wait()
	d.stop()
	if !d.logs.waitFor(`"msg":"stopped accepting"`) {
		t.Fatalf("the proxy never began shutting down:\n%s", d.logs)
	}
	close(release)
	wg.Wait()
	if ok.Load() != clients {
		t.Errorf("%d of %d requests in flight at SIGTERM completed", ok.Load(), clients)
	}
	if err := <-d.done; err != nil {
		t.Errorf("run = %v", err)
	}
}

// brokenListener fails its first Accept with a permanent error, as a
// listener whose socket was closed or exhausted does.
type brokenListener struct{ net.Listener }

func (l brokenListener) Accept() (net.Conn, error) { return nil, errors.New("accept: socket gone") }

// TestOneServerFailingStopsTheOther: when the admin server fails, the proxy
// is shut down too and the error is returned (so main exits non-zero).
func TestOneServerFailingStopsTheOther(t *testing.T) {
	proxyLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	servers := []serving{
		{"proxy", &http.Server{Handler: ok}, proxyLn},
		{"admin", &http.Server{Handler: ok}, brokenListener{adminLn}},
	}
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runServers(t.Context(), servers, time.Second, slog.New(slog.NewTextHandler(logs, nil)), &Proxy{}, nil)
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "admin server") || !strings.Contains(err.Error(), "socket gone") {
			t.Errorf("runServers = %v, want the admin server's failure", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("runServers still running after the admin server failed")
	}
	if c, err := net.Dial("tcp", proxyLn.Addr().String()); err == nil {
		c.Close()
		t.Error("the proxy still accepts connections after the admin server failed")
	}
	if !strings.Contains(logs.String(), "a server failed") {
		t.Errorf("no log line names the failure:\n%s", logs)
	}
}

// TestUnixSocketMode: the socket gets -socket-mode, and a process of the
// socket's group (not its owner) can connect exactly when the mode lets it.
func TestUnixSocketMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user (CI runs as root)")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is needed: apt-get install curl")
	}
	dir, err := os.MkdirTemp("", "s3h-socket")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o711) // others may traverse, not list
	for _, tt := range []struct {
		mode    string
		connect bool
	}{{"0660", true}, {"0600", false}} {
		t.Run(tt.mode, func(t *testing.T) {
			sock := filepath.Join(dir, "s3-helper-"+tt.mode+".sock")
			ctx, cancel := context.WithCancel(t.Context())
			errc := make(chan error, 1)
			logs := &syncBuffer{}
			go func() {
				errc <- run(ctx, []string{"-listen", "unix:" + sock, "-socket-mode", tt.mode, "-bucket", testBucket,
					"-region", "us-east-1", "-endpoint", "http://127.0.0.1:1"}, envFrom(staticEnv()), io.Discard, logs)
			}()
			t.Cleanup(func() { cancel(); <-errc })
			if !logs.waitFor("msg=listening") {
				t.Fatalf("s3-helper did not start:\n%s", logs)
			}
			fi, err := os.Stat(sock)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm().String() != os.FileMode(must(strconv.ParseUint(tt.mode, 8, 32))).String() {
				t.Errorf("socket mode = %v, want %s", fi.Mode().Perm(), tt.mode)
			}
			gid := fi.Sys().(*syscall.Stat_t).Gid
			cmd := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "http://localhost/k")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: gid}}
			out, err := cmd.Output()
			connected := err == nil && string(out) != "000"
			if connected != tt.connect {
				t.Errorf("a process of group %d (uid 65534) connected = %v (%q, %v), want %v", gid, connected, out, err, tt.connect)
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestDemoChecksEveryPortFirst: with any one of its ports taken, the demo
// stops at once, before starting anything, and names the variable that
// moves the port.
func TestDemoChecksEveryPortFirst(t *testing.T) {
	free := func() int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	for _, variable := range []string{"S3H_HELPER_PORT", "S3H_ADMIN_PORT", "S3H_NGINX_PORT", "S3H_IMDS_PORT", "S3H_S3_PORT"} {
		t.Run(variable, func(t *testing.T) {
			ports := map[string]int{"S3H_HELPER_PORT": free(), "S3H_ADMIN_PORT": free(), "S3H_NGINX_PORT": free(),
				"S3H_IMDS_PORT": free(), "S3H_S3_PORT": free()}
			ports[variable] = busyPort
			cmd := exec.Command("bash", "scripts/testenv.sh", "demo")
			cmd.Env = append(os.Environ(), "S3H_TESTENV_BIN="+t.TempDir()) // nothing installed there: must not get that far
			for k, v := range ports {
				cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", k, v))
			}
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("demo with %s busy succeeded:\n%s", variable, out)
			}
			want := fmt.Sprintf("port %d on 127.0.0.1 is in use: set %s", busyPort, variable)
			if !strings.Contains(string(out), want) || strings.Contains(string(out), "installing") {
				t.Errorf("demo output lacks %q, or started installing:\n%s", want, out)
			}
		})
	}
}

// TestRejectionsAreLoggedAndCounted: what net/http would answer by itself
// reaches the handler, so it is logged and counted: a header block over
// 32 KiB gets our 431, OPTIONS * our 405, and a request with both
// Transfer-Encoding and Content-Length is answered and its connection
// closed (RFC 9112 §6.1). Only a block beyond net/http's own cap is
// refused before the handler.
func TestRejectionsAreLoggedAndCounted(t *testing.T) {
	f, srv := newFakeS3(t)
	f.put("k", []byte("ok"))
	d := startDaemon(t, []string{"-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL, "-admin", "127.0.0.1:0", "-access-log"}, staticEnv())

	resp, _ := get(t, "GET", "http://"+d.addr+"/k", http.Header{"X-Big": {strings.Repeat("b", 40<<10)}})
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("40 KiB header = %d, want 431", resp.StatusCode)
	}
	if !d.logs.waitFor(`"status":431`) || !d.logs.waitFor("request header block too large") {
		t.Errorf("the 431 is not logged with its cause:\n%s", d.logs)
	}

	// raw sends requests on one connection and returns the statuses of
	// the answers read, and whether the server closed the connection
	// after the last one it answered.
	raw := func(requests ...string) (statuses []string, closed bool) {
		c, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		for _, request := range requests {
			if _, err := io.WriteString(c, request); err != nil {
				return statuses, true
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return statuses, errors.Is(err, io.EOF)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses = append(statuses, resp.Status[:3])
			if resp.Close {
				_, err := br.ReadByte()
				return statuses, errors.Is(err, io.EOF)
			}
		}
		return statuses, false
	}
	if statuses, _ := raw("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"); fmt.Sprint(statuses) != "[405]" {
		t.Errorf("OPTIONS * = %v, want 405", statuses)
	}
	smuggle := "GET /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
	plain := "GET /k HTTP/1.1\r\nHost: x\r\n\r\n"
	if statuses, closed := raw(smuggle, plain); fmt.Sprint(statuses) != "[200]" || !closed {
		t.Errorf("Transfer-Encoding with Content-Length, then a GET = %v, closed %v; want [200] and the connection closed", statuses, closed)
	}
	if statuses, closed := raw(plain, plain); fmt.Sprint(statuses) != "[200 200]" || closed {
		t.Errorf("two plain GETs = %v, closed %v; want both answered on one connection", statuses, closed)
	}

	_, metrics := get(t, "GET", "http://"+d.admin+"/metrics", nil)
	for _, want := range []string{`s3helper_requests_total{method="GET",status="431"} 1`, `s3helper_requests_total{method="other",status="405"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s:\n%s", want, metrics)
		}
	}

	resp, _ = get(t, "GET", "http://"+d.addr+"/k", http.Header{"X-Huge": {strings.Repeat("h", serverHeaderCap+8<<10)}})
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a header block beyond net/http's cap = %d, want its 431", resp.StatusCode)
	}
}

// TestAllCopiesDownGauge: all_copies_down is 0 while a copy of each bucket
// can serve and 1 once the bucket and its replica are both marked down
// (what /healthz reports as 503), beside bucket_up 0 for each.
func TestAllCopiesDownGauge(t *testing.T) {
	f, srv := newFakeS3(t)
	var failing atomic.Bool
	f.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if failing.Load() {
			s3Error(w, http.StatusInternalServerError, "InternalError", "We encountered an internal error.")
			return true
		}
		return false
	}
	f.put("a.mp4", []byte("video"))
	west, westSrv := newFakeS3(t)
	west.region, west.fault = "us-west-2", f.fault
	west.put("a.mp4", []byte("video"))
	d := startDaemon(t, []string{"-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL, "-admin", "127.0.0.1:0",
		"-retries", "0", "-replica", testBucket + "=media-west@us-west-2", "-region-endpoint", "us-west-2=" + westSrv.URL}, staticEnv())
	scrape := func() string {
		t.Helper()
		_, body := get(t, "GET", "http://"+d.admin+"/metrics", nil)
		return string(body)
	}
	for _, want := range []string{"s3helper_all_copies_down 0\n", `s3helper_bucket_up{bucket="media"} 1` + "\n"} {
		if text := scrape(); !strings.Contains(text, want) {
			t.Errorf("healthy: /metrics lacks %q", want)
		}
	}
	failing.Store(true)
	// Three fetches in a row that fail for the region's sake mark a copy
	// down; a request tries the copies in turn.
	text := ""
	for i := 0; i < 10 && !strings.Contains(text, "s3helper_all_copies_down 1\n"); i++ {
		get(t, "GET", "http://"+d.addr+"/a.mp4", nil)
		text = scrape()
	}
	for _, want := range []string{"s3helper_all_copies_down 1\n", `s3helper_bucket_up{bucket="media"} 0` + "\n", `s3helper_bucket_up{bucket="media-west"} 0` + "\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("every copy down: /metrics lacks %q", want)
		}
	}
	if resp, _ := get(t, "GET", "http://"+d.admin+"/healthz", nil); resp.StatusCode != 503 {
		t.Errorf("/healthz = %d with every copy down, want 503\n%s", resp.StatusCode, d.logs)
	}
}
