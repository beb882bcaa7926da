package main

// The real binary and systemd's protocols: sockets passed by Debian's
// systemd-socket-activate (proxy and admin, TCP and Unix), every bad
// LISTEN_* input refused with exit status 2 and one line naming it, and
// restarts under load through Debian's nginx: a supervisor in the test
// holds the listening socket as systemd does and restarts the binary on
// it three times, and no request fails.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// daemonArgs are the flags of a helper on the e2e stack, without -listen.
func daemonArgs(env *e2eEnv) []string {
	return []string{"-bucket", env.bucket, "-region", env.region, "-endpoint", env.s3, "-imds-endpoint", env.imds,
		"-log-format", "json", "-access-log=false"}
}

// freeTCPAddr is a loopback address nothing listens on.
func freeTCPAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestE2ESocketActivation: under systemd-socket-activate, which passes
// named sockets as systemd does, s3-helper serves objects on the passed
// proxy socket (TCP, then Unix) and health and metrics on the passed admin
// socket (with -pprof, which the passed admin socket serves as -admin
// would), binds nothing itself, and exits 0 on SIGTERM.
func TestE2ESocketActivation(t *testing.T) {
	env := needE2E(t)
	sock := filepath.Join(t.TempDir(), "s3-helper.sock")
	for _, tt := range []struct {
		name, proxy string
		client      *http.Client
	}{
		{"TCP", freeTCPAddr(t), http.DefaultClient},
		{"Unix", sock, &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			admin := freeTCPAddr(t)
			logs := &syncBuffer{}
			logFile, err := os.Create(filepath.Join(e2e.logsDir, "TestE2ESocketActivation_"+tt.name+".log"))
			if err != nil {
				t.Fatal(err)
			}
			defer logFile.Close()
			args := append([]string{"-l", tt.proxy, "-l", admin, "--fdname=proxy:admin", env.binary}, append(daemonArgs(env), "-pprof")...)
			cmd := exec.Command("systemd-socket-activate", args...)
			cmd.Stdout, cmd.Stderr = io.MultiWriter(logs, logFile), io.MultiWriter(logs, logFile)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			stopped := false
			defer func() {
				if !stopped {
					cmd.Process.Signal(syscall.SIGTERM)
					<-exited
				}
			}()
			if !logs.waitFor("Listening on " + tt.proxy) {
				t.Fatalf("systemd-socket-activate did not listen:\n%s", logs)
			}
			// The first connection starts s3-helper; it waits in the
			// socket's backlog meanwhile.
			host := tt.proxy
			if tt.name == "Unix" {
				host = "unix"
			}
			resp, err := tt.client.Get("http://" + host + "/hello.txt")
			if err != nil {
				t.Fatalf("GET on the passed socket: %v\n%s", err, logs)
			}
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !bytes.Equal(body.Bytes(), readSeed(t, env, "hello.txt")) {
				t.Errorf("GET /hello.txt on the passed socket = %d %q", resp.StatusCode, body.String())
			}
			if hresp, hbody := get(t, "GET", "http://"+admin+"/healthz", nil); hresp.StatusCode != 200 {
				t.Errorf("/healthz on the passed admin socket = %d %s", hresp.StatusCode, hbody)
			}
			if mresp, _ := get(t, "GET", "http://"+admin+"/metrics", nil); mresp.StatusCode != 200 {
				t.Errorf("/metrics on the passed admin socket = %d", mresp.StatusCode)
			}
			if presp, _ := get(t, "GET", "http://"+admin+"/debug/pprof/cmdline", nil); presp.StatusCode != 200 {
				t.Errorf("/debug/pprof/cmdline on the passed admin socket with -pprof = %d", presp.StatusCode)
			}
			if strings.Contains(logs.String(), "127.0.0.1:8080") {
				t.Errorf("s3-helper bound its default -listen although systemd passed the socket:\n%s", logs)
			}
			cmd.Process.Signal(syscall.SIGTERM)
			stopped = true
			if err := <-exited; err != nil {
				t.Errorf("exit after SIGTERM: %v, want status 0\n%s", err, logs)
			}
		})
	}
}

// startWithFDs runs the binary with files as fds 3, 4, … and LISTEN_PID
// naming it (a shell that execs the binary keeps its process id).
func startWithFDs(env *e2eEnv, files []*os.File, listenEnv []string, args ...string) *exec.Cmd {
	cmd := exec.Command("sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, env.binary}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + env.dir}, listenEnv...)
	cmd.ExtraFiles = files
	return cmd
}

// TestE2ESocketActivationBadInput: each bad LISTEN_* input is a
// configuration error: exit status 2 and one line naming the cause, before
// any network call. LISTEN_PID naming another process means the variables
// are not for s3-helper, which then binds -listen as usual.
func TestE2ESocketActivationBadInput(t *testing.T) {
	env := needE2E(t)
	listener := func(addr string) *os.File {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	regular, err := os.CreateTemp(t.TempDir(), "not-a-socket")
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	udpFile, _ := udp.(*net.UDPConn).File()
	defer udpFile.Close()
	server, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	client, err := net.Dial("tcp", server.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	clientFile, _ := client.(*net.TCPConn).File()
	defer clientFile.Close()

	fileOf := func(ln net.Listener) *os.File {
		f, err := ln.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	shared := listener("127.0.0.1:0")
	reused := listenReusePort(t, "127.0.0.1:0")
	reusedToo := listenReusePort(t, reused.Addr().String())

	tests := []struct {
		name  string
		files []*os.File
		env   []string
		args  []string
		want  string
	}{
		{"LISTEN_FDS not a number", nil, []string{"LISTEN_FDS=one"}, nil, `LISTEN_FDS "one" is not a number of sockets`},
		{"more sockets than s3-helper uses", []*os.File{listener("127.0.0.1:0"), listener("127.0.0.1:0"), listener("127.0.0.1:0")},
			[]string{"LISTEN_FDS=3"}, nil, "LISTEN_FDS=3, but s3-helper uses at most 2 sockets"},
		{"a regular file", []*os.File{regular}, []string{"LISTEN_FDS=1"}, nil, "fd 3 (proxy) is not a socket"},
		{"a datagram socket", []*os.File{udpFile}, []string{"LISTEN_FDS=1"}, nil, "fd 3 (proxy) is not a listening stream socket"},
		{"a connected stream socket", []*os.File{clientFile}, []string{"LISTEN_FDS=1"}, nil, "fd 3 (proxy) is not a listening stream socket"},
		{"two sockets, one role", []*os.File{listener("127.0.0.1:0"), listener("127.0.0.1:0")}, []string{"LISTEN_FDS=2"}, nil,
			"fds 3 and 4 are both the proxy socket"},
		{"one socket as proxy and admin", []*os.File{shared, shared}, []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=proxy:admin"}, nil,
			"fds 3 (proxy) and 4 (admin) are one socket"},
		{"two sockets on one address as proxy and admin", []*os.File{fileOf(reused), fileOf(reusedToo)}, []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=proxy:admin"}, nil,
			"fds 3 (proxy) and 4 (admin) both listen on " + reused.Addr().String()},
		{"an unknown name", []*os.File{listener("127.0.0.1:0")}, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=metrics"}, nil,
			`socket name "metrics" is neither proxy nor admin`},
		{"-listen as well", []*os.File{listener("127.0.0.1:0")}, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=proxy"}, []string{"-listen", "127.0.0.1:0"},
			"systemd passed the proxy socket (fd 3) and -listen is set too"},
		{"a socket open to other hosts", []*os.File{listener("0.0.0.0:0")}, []string{"LISTEN_FDS=1"}, nil,
			"is not a loopback address; add -allow-remote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := startWithFDs(env, tt.files, tt.env, append(daemonArgs(env), tt.args...)...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("exit: %v, want status 2\n%s", err, out.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(lines) != 3 || !strings.Contains(lines[1], tt.want) {
				t.Errorf("output, want one line naming %q:\n%s", tt.want, out.String())
			}
		})
	}

	t.Run("LISTEN_PID for another process", func(t *testing.T) {
		cmd := exec.Command(env.binary, append(daemonArgs(env), "-listen", "127.0.0.1:0")...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + env.dir, "LISTEN_PID=1", "LISTEN_FDS=1"}
		cmd.ExtraFiles = []*os.File{regular}
		logs := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer cmd.Process.Signal(syscall.SIGTERM)
		if addr, _ := awaitListening(t, logs, false); addr == "" {
			t.Errorf("s3-helper did not listen on -listen:\n%s", logs)
		}
	})
}

// TestE2ERestartUnderLoad: Debian's nginx (upstream keep-alive, as the
// README configures it) carries 100 Range GETs of 64 KiB per second while
// a supervisor holding the listening socket restarts s3-helper on it three
// times: SIGTERM, wait for it to exit, start it again with LISTEN_FDS=1.
// Connections wait in the socket's backlog in between, and nginx retries
// a request that met a closing keep-alive connection: none fails.
func TestE2ERestartUnderLoad(t *testing.T) {
	env := needE2E(t)
	object := readSeed(t, env, "big.bin")
	ln, err := net.Listen("tcp", env.nginxHelper)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	notify, notifyPath := notifyListener(t)
	logFile, err := os.Create(filepath.Join(e2e.logsDir, "TestE2ERestartUnderLoad.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	start := func() (*exec.Cmd, chan error) {
		cmd := startWithFDs(env, []*os.File{lf}, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=proxy", "NOTIFY_SOCKET=" + notifyPath}, daemonArgs(env)...)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		return cmd, exited
	}
	awaitReady := func() {
		t.Helper()
		for state := ""; !strings.HasPrefix(state, "READY=1"); {
			if state = nextState(notify, 10*time.Second); state == "" {
				t.Fatal("s3-helper never sent READY=1")
			}
		}
	}
	cmd, exited := start()
	awaitReady()
	done := make(chan loadResult, 1)
	go func() { done <- rangeLoadAt(t, env.nginx+"/big.bin", object, 100, 12*time.Second) }()
	var restarts []time.Duration
	for range 3 {
		time.Sleep(3 * time.Second) // the load runs meanwhile
		began := time.Now()
		cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Errorf("s3-helper exited with %v after SIGTERM, want status 0", err)
		}
		cmd, exited = start()
		awaitReady()
		restarts = append(restarts, time.Since(began))
	}
	res := <-done
	cmd.Process.Signal(syscall.SIGTERM)
	<-exited
	t.Logf("3 restarts (SIGTERM to READY=1: %v) under 100 Range GETs/s through nginx: %s", restarts, res)
	if res.failed > 0 {
		t.Errorf("%d requests failed across the restarts: %v", res.failed, res.statuses)
	}
	if p99 := res.quantile(0.99); p99 > time.Second {
		t.Errorf("p99 across the restarts = %v, want at most 1 s", p99)
	}
}

// TestE2ESignalsDrain: SIGHUP (a closed terminal, an operator's kill -HUP),
// SIGINT and SIGTERM each drain: STOPPING=1, a download in flight gets
// every byte, "shutting down" is logged and the exit status is 0. SIGHUP's
// default action would kill the process at once: exit status 129, the
// download cut, no STOPPING=1.
func TestE2ESignalsDrain(t *testing.T) {
	env := needE2E(t)
	object := readSeed(t, env, "large.bin")
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM} {
		t.Run(strings.ToUpper(sig.String()), func(t *testing.T) {
			notify, notifyPath := notifyListener(t)
			logs := &syncBuffer{}
			logFile, err := os.Create(filepath.Join(e2e.logsDir, "TestE2ESignalsDrain_"+strings.ReplaceAll(sig.String(), " ", "_")+".log"))
			if err != nil {
				t.Fatal(err)
			}
			defer logFile.Close()
			cmd := exec.Command(env.binary, append(daemonArgs(env), "-listen", "127.0.0.1:0")...)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + env.dir, "NOTIFY_SOCKET=" + notifyPath}
			cmd.Stdout, cmd.Stderr = io.MultiWriter(logs, logFile), io.MultiWriter(logs, logFile)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var waitErr error
			exited := make(chan struct{}) // closed once waitErr is set
			go func() { waitErr = cmd.Wait(); close(exited) }()
			defer func() {
				cmd.Process.Kill() // if it still runs
				<-exited
			}()
			addr, _ := awaitListening(t, logs, false)
			for state := ""; !strings.HasPrefix(state, "READY=1"); {
				if state = nextState(notify, 10*time.Second); state == "" {
					t.Fatalf("s3-helper never sent READY=1:\n%s", logs)
				}
			}
			resp, err := http.Get("http://" + addr + "/large.bin")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			first := make([]byte, 64<<10)
			if _, err := io.ReadFull(resp.Body, first); err != nil {
				t.Fatalf("first bytes: %v", err)
			}
			// The rest waits in s3-helper while the signal arrives.
			cmd.Process.Signal(sig)
			for state := ""; !strings.HasPrefix(state, "STOPPING=1"); {
				if state = nextState(notify, 10*time.Second); state == "" {
					t.Fatalf("no STOPPING=1 after %v:\n%s", sig, logs)
				}
			}
			rest, err := io.ReadAll(resp.Body)
			if got := append(first, rest...); err != nil || !bytes.Equal(got, object) {
				t.Errorf("download in flight at %v: %d of %d bytes, %v; want every byte", sig, len(got), len(object), err)
			}
			select {
			case <-exited:
				if waitErr != nil {
					t.Errorf("exit after %v: %v, want status 0\n%s", sig, waitErr, logs)
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("s3-helper still running 15 s after %v:\n%s", sig, logs)
			}
			if !strings.Contains(logs.String(), `"msg":"shutting down"`) {
				t.Errorf("no shutting down line after %v:\n%s", sig, logs)
			}
		})
	}
}
