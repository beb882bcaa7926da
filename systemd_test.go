package main

// systemd's protocols: every bad LISTEN_* input named (the real binary's
// exit status for each is in e2e_systemd_test.go), READY=1 only once the
// first credentials are in, STOPPING=1 on SIGTERM, the watchdog's beat,
// and a drain that says so on /healthz and ends a cut download as a cut
// at shutdown with exit status 0.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestListenEnv(t *testing.T) {
	const pid = 4242
	tests := []struct {
		name string
		env  map[string]string
		want string // the roles, "" for none; or the error's text
		err  bool
	}{
		{"nothing passed", map[string]string{}, "", false},
		{"for another process", map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "1"}, "", false},
		{"LISTEN_PID not a number", map[string]string{"LISTEN_PID": "me", "LISTEN_FDS": "1"}, "", false},
		{"zero sockets", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, "", false},
		{"one unnamed", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1"}, "proxy@3", false},
		{"systemd's default names", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "s3-helper.socket"}, "proxy@3", false},
		{"proxy and admin", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "admin:proxy"}, "admin@3 proxy@4", false},
		{"LISTEN_FDS not a number", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, `LISTEN_FDS "two" is not a number`, true},
		{"LISTEN_FDS negative", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, `LISTEN_FDS "-1" is not a number`, true},
		{"more sockets than s3-helper uses", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3"}, "LISTEN_FDS=3, but s3-helper uses at most 2", true},
		{"names do not match the count", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "proxy"}, "LISTEN_FDNAMES names 1 sockets, LISTEN_FDS=2", true},
		{"two proxy sockets", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, "fds 3 and 4 are both the proxy socket", true},
		{"two admin sockets", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "admin:admin"}, "fds 3 and 4 are both the admin socket", true},
		{"an unknown name", map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "metrics\x1b[2J"}, `fd 3: socket name "metrics?[2J" is neither proxy nor admin`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sockets, err := listenEnv(envFrom(tt.env), pid)
			if tt.err {
				if err == nil || !errors.Is(err, errSocketActivation) || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("error %v, want one naming %q", err, tt.want)
				}
				return
			}
			var got []string
			for _, s := range sockets {
				got = append(got, fmt.Sprintf("%s@%d", s.role, s.fd))
			}
			if err != nil || strings.Join(got, " ") != tt.want {
				t.Errorf("sockets %v, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestWatchdogInterval(t *testing.T) {
	for _, tt := range []struct {
		env  map[string]string
		want time.Duration
	}{
		{map[string]string{}, 0},
		{map[string]string{"WATCHDOG_USEC": "30000000"}, 15 * time.Second},
		{map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15 * time.Second},
		{map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 0},
		{map[string]string{"WATCHDOG_USEC": "soon"}, 0},
	} {
		if got := watchdogInterval(envFrom(tt.env), 4242); got != tt.want {
			t.Errorf("%v: interval %v, want %v", tt.env, got, tt.want)
		}
	}
}

// notifyListener is the service manager's end of NOTIFY_SOCKET.
func notifyListener(t *testing.T) (*net.UnixConn, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, path
}

// nextState reads one report, waiting at most d; "" when none came.
func nextState(conn *net.UnixConn, d time.Duration) string {
	conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// TestReadinessReports: with IMDS held back, s3-helper listens but says
// nothing; READY=1 arrives once the first credential set is in, as
// /healthz turns healthy; WATCHDOG=1 beats at half WATCHDOG_USEC;
// STOPPING=1 comes with SIGTERM. The abstract socket form works too.
func TestReadinessReports(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract %v", abstract), func(t *testing.T) {
			conn, path := notifyListener(t)
			addr := path
			if abstract {
				conn.Close()
				addr = fmt.Sprintf("@s3-helper-test-%d", time.Now().UnixNano())
				var err error
				if conn, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"}); err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
			}
			imds, imdsSrv := newFakeIMDS(t, time.Now().Add(6*time.Hour))
			release := make(chan struct{})
			held := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				<-release
				imds.ServeHTTP(w, r)
			}))
			t.Cleanup(held.Close)
			t.Cleanup(func() { imdsSrv.Close() })
			_, s3 := newFakeS3(t)
			logs := &syncBuffer{}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			env := map[string]string{"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "100000"}
			go func() {
				done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0", "-log-format", "json", "-bucket", testBucket,
					"-region", "us-east-1", "-endpoint", s3.URL, "-imds-endpoint", held.URL}, envFrom(env), io.Discard, logs)
			}()
			_, admin := awaitListening(t, logs, true)
			if state := nextState(conn, 0); strings.Contains(state, "READY=1") {
				t.Fatalf("READY before any credentials: %q", state)
			}
			if resp, _ := get(t, "GET", "http://"+admin+"/healthz", nil); resp.StatusCode != 503 {
				t.Errorf("/healthz before credentials = %d, want 503", resp.StatusCode)
			}
			close(release)
			var states []string
			for !strings.Contains(strings.Join(states, " "), "READY=1") {
				state := nextState(conn, 10*time.Second)
				if state == "" {
					t.Fatalf("no READY=1 after the credentials arrived; got %q", states)
				}
				states = append(states, state)
			}
			if resp, _ := get(t, "GET", "http://"+admin+"/healthz", nil); resp.StatusCode != 200 {
				t.Errorf("/healthz once READY=1 was sent = %d, want 200", resp.StatusCode)
			}
			for beats := 0; beats < 2; {
				switch state := nextState(conn, 10*time.Second); {
				case state == "":
					t.Fatal("the watchdog stopped beating")
				case state == "WATCHDOG=1":
					beats++
				}
			}
			cancel()
			for state := ""; !strings.HasPrefix(state, "STOPPING=1"); {
				if state = nextState(conn, 10*time.Second); state == "" {
					t.Fatal("no STOPPING=1 on shutdown")
				}
			}
			if err := <-done; err != nil {
				t.Errorf("run = %v", err)
			}
		})
	}
}

// TestDrainSaysSoAndEndsWithACut: on SIGTERM /healthz answers 503
// draining while a download streams, and the watchdog keeps beating (or
// systemd would kill a draining process); when -shutdown-timeout expires
// the download is cut, logged and counted as a cut at shutdown (not a
// client gone), and s3-helper exits 0.
func TestDrainSaysSoAndEndsWithACut(t *testing.T) {
	f, srv := newFakeS3(t)
	streaming := make(chan struct{})
	f.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
		w.Header().Set("Content-Length", "1000000")
		w.Header().Set("Etag", `"e"`)
		w.WriteHeader(200)
		w.Write(bytes.Repeat([]byte("x"), 100_000)) // more than s3-helper's buffers hold
		w.(http.Flusher).Flush()
		close(streaming)
		<-r.Context().Done() // never the rest
		return true
	}
	logs := &syncBuffer{}
	notify, notifyPath := notifyListener(t)
	env := staticEnv()
	env["NOTIFY_SOCKET"], env["WATCHDOG_USEC"] = notifyPath, "100000"
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0", "-log-format", "json", "-bucket", testBucket,
			"-region", "us-east-1", "-endpoint", srv.URL, "-shutdown-timeout", "300ms", "-timeout", "1m"}, envFrom(env), io.Discard, logs)
	}()
	addr, admin := awaitListening(t, logs, true)
	got := make(chan int64, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/slow.mp4")
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got <- n
	}()
	<-streaming
	cancel() // SIGTERM
	if !logs.waitFor(`"msg":"shutting down"`) {
		t.Fatalf("no shutdown:\n%s", logs)
	}
	hresp, body := get(t, "GET", "http://"+admin+"/healthz", nil)
	if hresp.StatusCode != 503 || !strings.Contains(string(body), "draining") {
		t.Errorf("/healthz during the drain = %d %q, want 503 draining", hresp.StatusCode, body)
	}
	for state := ""; !strings.HasPrefix(state, "STOPPING=1"); {
		if state = nextState(notify, 10*time.Second); state == "" {
			t.Fatal("no STOPPING=1")
		}
	}
	if state := nextState(notify, 10*time.Second); state != "WATCHDOG=1" {
		t.Errorf("after STOPPING=1 the service manager heard %q, want the watchdog beating through the drain", state)
	}
	if n := <-got; n <= 0 || n >= 1_000_000 {
		t.Errorf("the client read %d bytes; want the response started, then cut", n)
	}
	if err := <-done; err != nil {
		t.Errorf("run after a cut = %v, want nil (exit status 0)", err)
	}
	text := logs.String()
	if !strings.Contains(text, `"status":503`) || !strings.Contains(text, "cut at shutdown after ") || strings.Contains(text, `"status":499`) {
		t.Errorf("the cut download is not logged as a cut at shutdown:\n%s", text)
	}
	if !strings.Contains(text, `"msg":"shutdown: -shutdown-timeout expired; cut the requests still in flight","cut":1`) {
		t.Errorf("no line counts the cut:\n%s", text)
	}
}

// TestNotifyNeverBlocks: a service manager that stops reading fills its
// socket; each report then fails within notifyTimeout instead of holding
// up the shutdown that sends STOPPING=1.
func TestNotifyNeverBlocks(t *testing.T) {
	_, path := notifyListener(t) // never read
	n, err := newNotifier(envFrom(map[string]string{"NOTIFY_SOCKET": path}))
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	for i := range 100_000 {
		start := time.Now()
		err := n.send("WATCHDOG=1")
		if took := time.Since(start); took > notifyTimeout+time.Second {
			t.Fatalf("report %d took %v", i, took)
		}
		if err != nil {
			return // the socket is full, and the report gave up in time
		}
	}
	t.Fatal("100,000 reports fitted in an unread socket; the test did not reach a full one")
}

// TestOneSocketIsNotBothListeners: a socket passed as both the proxy and
// the admin socket is refused, naming both descriptors, whether it is one
// socket under two descriptors (TCP or Unix) or two sockets bound to one
// address with SO_REUSEPORT; two sockets of their own, and a descriptor
// that is no socket, are left alone.
func TestOneSocketIsNotBothListeners(t *testing.T) {
	fdOf := func(t *testing.T, ln net.Listener) int {
		t.Helper()
		f, err := ln.(interface{ File() (*os.File, error) }).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return int(f.Fd())
	}
	listen := func(t *testing.T, network, addr string) net.Listener {
		t.Helper()
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	pair := func(a, b int) []inheritedSocket {
		return []inheritedSocket{{fd: a, role: roleProxy}, {fd: b, role: roleAdmin}}
	}
	tests := []struct {
		name    string
		sockets func(t *testing.T) []inheritedSocket
		want    string // "" for accepted
	}{
		{"one TCP socket twice", func(t *testing.T) []inheritedSocket {
			ln := listen(t, "tcp", "127.0.0.1:0")
			return pair(fdOf(t, ln), fdOf(t, ln))
		}, "are one socket (127.0.0.1:"},
		{"one Unix socket twice", func(t *testing.T) []inheritedSocket {
			ln := listen(t, "unix", filepath.Join(t.TempDir(), "s.sock"))
			return pair(fdOf(t, ln), fdOf(t, ln))
		}, "are one socket ("},
		{"two sockets on one address (ReusePort=)", func(t *testing.T) []inheritedSocket {
			a := listenReusePort(t, "127.0.0.1:0")
			b := listenReusePort(t, a.Addr().String())
			return pair(fdOf(t, a), fdOf(t, b))
		}, "both listen on " + "127.0.0.1:"},
		{"two sockets", func(t *testing.T) []inheritedSocket {
			return pair(fdOf(t, listen(t, "tcp", "127.0.0.1:0")), fdOf(t, listen(t, "tcp", "127.0.0.1:0")))
		}, ""},
		{"one regular file twice", func(t *testing.T) []inheritedSocket {
			f, err := os.CreateTemp(t.TempDir(), "regular")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return pair(int(f.Fd()), int(f.Fd()))
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sockets := tt.sockets(t)
			err := checkDistinctSockets(sockets)
			if tt.want == "" {
				if err != nil {
					t.Errorf("checkDistinctSockets = %v, want nil", err)
				}
				return
			}
			names := fmt.Sprintf("fds %d (proxy) and %d (admin) ", sockets[0].fd, sockets[1].fd)
			if err == nil || !strings.Contains(err.Error(), names+tt.want) || !errors.Is(err, errSocketActivation) {
				t.Errorf("checkDistinctSockets = %v, want an error naming %q", err, names+tt.want)
			}
		})
	}
}

// listenReusePort listens on addr with SO_REUSEPORT, as a .socket unit
// with ReusePort=yes does; closed at the test's end.
func listenReusePort(t *testing.T, addr string) net.Listener {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReusePort, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// soReusePort is SO_REUSEPORT on Linux, which package syscall lacks.
const soReusePort = 0xf
