package main

// s3-helper -check against an S3 stand-in that behaves like S3 in each
// broken set-up: exactly the right step fails, with its fix.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCheck runs s3-helper -check against an S3 stand-in that behaves like
// S3 in each broken set-up; exactly the right step fails, with its fix.
func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(f *fakeS3)
		args    []string
		env     map[string]string
		wantErr bool
		want    []string
	}{
		{"healthy", nil, []string{"-check-key", "/videos/hello.txt"}, nil, false, []string{
			"PASS  configuration: flags and environment are valid",
			"PASS  credentials: environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set): access key " + testAKID + ", never expire",
			"PASS  bucket media: exists and answers in region us-east-1",
			"PASS  clock: within",
			"PASS  permissions on media: a missing key is 404 (s3:ListBucket is granted)",
			"PASS  read /videos/hello.txt: HEAD s3://media/videos/hello.txt answered 200 (s3:GetObject is granted)",
		}},
		{"no s3:ListBucket", func(f *fakeS3) { f.noListBucket = true }, nil, nil, true, []string{
			"FAIL  permissions on media: a missing key is 403 AccessDenied",
			`fix: add to the role's policy {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::media"}`,
		}},
		{"missing object", nil, []string{"-check-key", "/videos/nope.mp4"}, nil, true, []string{
			"FAIL  read /videos/nope.mp4: s3://media/videos/nope.mp4 does not exist (HEAD 404)",
		}},
		{"not S3: a server that serves anything", func(f *fakeS3) {
			f.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
				w.Write([]byte("<html>a file server, a captive portal</html>"))
				return true
			}
		}, nil, nil, true, []string{
			"answered 200 for a key that cannot exist (s3-helper-check/",
			"): it is not S3, or it does not check signatures",
			"fix: point -endpoint at S3",
		}},
		{"not S3: a 404 without S3's code", func(f *fakeS3) {
			f.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
				http.NotFound(w, r)
				return true
			}
		}, nil, nil, true, []string{
			"answered 404 without S3's error code: it is not S3, or something in between answers for it",
		}},
		{"wrong secret", func(f *fakeS3) { f.secret = "another-secret" }, nil, nil, true, []string{
			"FAIL  bucket media: S3 answered 403 SignatureDoesNotMatch: the secret key does not belong to the access key ID",
			"fix: check the credential source",
		}},
		{"wrong region", func(f *fakeS3) {
			f.fault = func(w http.ResponseWriter, r *http.Request, n int) bool {
				w.Header().Set("X-Amz-Bucket-Region", "eu-west-1")
				s3Error(w, http.StatusMovedPermanently, "PermanentRedirect", "use the right endpoint")
				return true
			}
		}, nil, nil, true, []string{
			"FAIL  bucket media: S3 answered 301 PermanentRedirect: the bucket is not in -region us-east-1",
			"fix: set -region eu-west-1",
		}},
		{"missing bucket", nil, []string{"-route", "/ads/=ads-bucket"}, nil, true, []string{
			"PASS  bucket media: exists",
			"FAIL  bucket ads-bucket (route /ads/): S3 answered 404 NoSuchBucket: the bucket does not exist",
		}},
		{"clock far off", func(f *fakeS3) { f.clockAhead = 20 * time.Minute }, nil, nil, true, []string{
			"FAIL  clock: this host is 20m0s behind S3's clock: SigV4 refuses signatures more than 15 minutes off",
			"fix: synchronise the clock",
		}},
		{"clock a little off", func(f *fakeS3) { f.clockAhead = 3 * time.Minute }, nil, nil, false, []string{
			"WARN  clock: this host is 3m0s behind S3's clock",
		}},
		{"bad configuration", nil, []string{"-timeout", "banana"}, nil, true, []string{
			`FAIL  configuration: -timeout "banana": must be a duration such as 5s`,
		}},
		{"dead IMDS", nil, []string{"-imds-endpoint", "http://127.0.0.1:1"}, map[string]string{}, true, []string{
			"FAIL  credentials: imds http://127.0.0.1:1 (no other source is configured): discover instance role",
			"fix: attach an instance profile",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, srv := newFakeS3(t)
			f.put("videos/hello.txt", []byte("hello"))
			if tt.setup != nil {
				tt.setup(f)
			}
			env := staticEnv()
			if tt.env != nil {
				env = tt.env
			}
			args := append([]string{"-check", "-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL, "-listen", "127.0.0.1:0"}, tt.args...)
			var out bytes.Buffer
			err := run(t.Context(), args, envFrom(env), &out, &bytes.Buffer{})
			if gotErr := err != nil; gotErr != tt.wantErr || err != nil && !errors.Is(err, errCheckFailed) {
				t.Errorf("run -check = %v, want failure %v\n%s", err, tt.wantErr, out.String())
			}
			for _, want := range tt.want {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			for _, secret := range []string{testSecret, testToken} {
				if strings.Contains(out.String(), secret) {
					t.Error("the output contains a secret")
				}
			}
		})
	}
}

// TestCheckListenersUnderSocketActivation: a busy default -listen is what
// systemd holding s3-helper.socket looks like, so it is a warning; a busy
// -listen that was given fails.
func TestCheckListenersUnderSocketActivation(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, given := range []bool{false, true} {
		var out bytes.Buffer
		c := &checker{out: &out}
		c.checkListeners(config{listenNetwork: "tcp", listenAddress: ln.Addr().String(), listenGiven: given})
		want := "WARN  configuration: " + ln.Addr().String() + " is in use"
		if given {
			want = "FAIL  configuration: " + ln.Addr().String() + " is not free"
		}
		if !strings.HasPrefix(out.String(), want) || (c.failed > 0) != given {
			t.Errorf("-listen given %v: %q (failed %d), want %q", given, out.String(), c.failed, want)
		}
	}
}

// TestCheckAccessPoint: -check probes a Multi-Region Access Point with
// SigV4A, as the proxy reaches it, and names it.
func TestCheckAccessPoint(t *testing.T) {
	ap, srv := newFakeAccessPoint(t)
	ap.objects["videos/hello.txt"] = []byte("hello")
	var out bytes.Buffer
	err := run(t.Context(), []string{"-check", "-bucket", "arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap", "-region", "us-east-1",
		"-endpoint", srv.URL, "-listen", "127.0.0.1:0", "-check-key", "/videos/hello.txt"}, envFrom(staticEnv()), &out, &bytes.Buffer{})
	if err != nil {
		t.Errorf("-check = %v\n%s", err, out.String())
	}
	for _, want := range []string{"PASS  access point mfzwi23gnjvgw.mrap: answers SigV4A requests for every region",
		"PASS  read /videos/hello.txt: HEAD"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestCheckReplicas: -check checks each replica like its primary: the
// bucket, its region, the signature, s3:ListBucket and -check-key.
func TestCheckReplicas(t *testing.T) {
	f, srv := newFakeS3(t)
	f.put("videos/hello.txt", []byte("hello"))
	west, westSrv := newFakeS3(t)
	west.region = "us-west-2"
	var out bytes.Buffer
	err := run(t.Context(), []string{"-check", "-bucket", testBucket, "-region", "us-east-1", "-endpoint", srv.URL, "-listen", "127.0.0.1:0",
		"-replica", testBucket + "=" + testBucket + "-west@us-west-2", "-region-endpoint", "us-west-2=" + westSrv.URL, "-check-key", "/videos/hello.txt"},
		envFrom(staticEnv()), &out, &bytes.Buffer{})
	if !errors.Is(err, errCheckFailed) {
		t.Errorf("-check = %v, want a failure (the replica)", err)
	}
	for _, want := range []string{
		"PASS  bucket media: exists and answers in region us-east-1",
		"FAIL  bucket media-west (replica in us-west-2): S3 answered 404 NoSuchBucket",
		"PASS  read /videos/hello.txt: HEAD s3://media/videos/hello.txt answered 200",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestCheckFrontEnds: -check connects to every address of the endpoint's
// name: all accepting pass; some refusing warn and name them; none
// accepting fails; a name without an address fails.
func TestCheckFrontEnds(t *testing.T) {
	var addrs []netip.Addr
	var port string
	for i := range 2 {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%s", 51+i, cmp.Or(port, "0")))
		if err != nil {
			t.Skipf("cannot listen on 127.0.0.%d: %v", 51+i, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.Close()
			}
		}()
		_, port, _ = net.SplitHostPort(ln.Addr().String())
		addrs = append(addrs, netip.AddrFrom4([4]byte{127, 0, 0, byte(51 + i)}))
	}
	for _, tt := range []struct {
		name  string
		addrs []netip.Addr
		want  string
	}{
		{"all accept", addrs, "PASS  front ends of s3.test: 2 addresses, each accepts a connection"},
		{"one refuses", append(slices.Clone(addrs), netip.AddrFrom4([4]byte{127, 0, 0, 53})), "WARN  front ends of s3.test: 1 of 3 addresses fail: 127.0.0.53:" + port},
		{"none accepts", []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 53})}, "FAIL  front ends of s3.test: no address accepts a connection: 127.0.0.53:" + port},
		{"no address", nil, "FAIL  front ends of s3.test: no address: no address for s3.test"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			c := &checker{out: &out}
			door := &frontDoor{
				resolve:      func(context.Context, string) ([]netip.Addr, error) { return tt.addrs, nil },
				newTransport: func(netip.AddrPort) frontTransport { return &http.Transport{} },
				log:          slog.New(slog.DiscardHandler), background: &backgroundWork{},
			}
			c.checkFrontEndsOf(t.Context(), door.frontEndsOf("http", "s3.test:"+port), "http")
			if !strings.Contains(out.String(), tt.want) {
				t.Errorf("-check printed:\n%s\nwant a line with %q", out.String(), tt.want)
			}
		})
	}
}
