package main

// The configuration: every validation problem at once, -presign checked
// before the network.

import (
	"bytes"
	"errors"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestValidationReportsEveryProblem(t *testing.T) {
	var stderr bytes.Buffer
	err := run(t.Context(), []string{
		"-listen", "0.0.0.0:8080", "-admin", "10.0.0.1:9000", "-region", "US_EAST",
		"-endpoint", "ftp://s3", "-timeout", "1ms", "-retries", "-1", "-statsd", "nohost",
		"-log-format", "xml", "-log-level", "loud", "-route", "avod=b", "-prefix", "/abs",
		"-imds-endpoint", "http://user:pw@127.0.0.1:1338/x",
	}, envFrom(map[string]string{"AWS_ACCESS_KEY_ID": "AKIA"}), io.Discard, &stderr)
	var ce configError
	if !errors.As(err, &ce) {
		t.Fatalf("run = %v, want a configError (exit 2)", err)
	}
	for _, want := range []string{
		`-listen "0.0.0.0:8080": not a loopback address; add -allow-remote`,
		`-admin "10.0.0.1:9000": not a loopback address`,
		`-bucket "": required`,
		`-region "US_EAST": must look like us-east-1`,
		`-endpoint "ftp://s3": must be an http:// or https:// URL`,
		`-timeout "1ms": must be between 100ms and 5m`,
		`-retries "-1": must be between 0 and 10`,
		`-statsd "nohost": must be HOST:PORT`,
		`-log-format "xml": must be text or json`,
		`-log-level "loud": must be debug, info, warn or error`,
		`-route "avod=b": path prefix must start with '/'`,
		`-prefix "/abs": must not start with '/'`,
		`$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY: set both or neither`,
		`-imds-endpoint "http://user:xxxxx@127.0.0.1:1338/x": must have no path, query or user info`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("validation error lacks %q:\n%v", want, err)
		}
	}
}

// TestPresignChecksBeforeTheNetwork: -presign takes the proxy's key rules
// and a valid -presign-expires, checked before any credential or region
// lookup (the IMDS endpoint here would refuse the connection).
func TestPresignChecksBeforeTheNetwork(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"empty key", []string{"-presign", ""}, `-presign "": needs an object key`},
		{"dot segment", []string{"-presign", "a/../b.mp4"}, `-presign "a/../b.mp4": invalid object key: ".." segment`},
		{"control character", []string{"-presign", "a\x01b"}, "control character"},
		{"expiry too long", []string{"-presign", "a.mp4", "-presign-expires", "200h"}, `-presign-expires "200h0m0s": must be between 1s and 168h`},
		{"expiry zero", []string{"-presign", "a.mp4", "-presign-expires", "0s"}, `-presign-expires "0s"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-bucket", "media", "-imds-endpoint", "http://127.0.0.1:1"}, tt.args...)
			var out bytes.Buffer
			err := run(t.Context(), args, envFrom(nil), &out, io.Discard)
			var ce configError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run = %v, want a configError with %q", err, tt.want)
			}
			if out.Len() > 0 {
				t.Errorf("printed %q", out.String())
			}
		})
	}
}

// TestReplicaFlagsReportEveryProblem: every problem of -replica and
// -region-endpoint is reported with the others (exit status 2).
func TestReplicaFlagsReportEveryProblem(t *testing.T) {
	err := run(t.Context(), []string{"-bucket", "media", "-region", "eu-west-1", "-route", "/ads/=ads",
		"-replica", "other=other-west@us-west-2", "-replica", "media=media@us-west-2", "-replica", "media=media-west",
		"-replica", "media=media-west@US_WEST", "-replica", "ads=ads-west@us-west-2", "-replica", "ads=ads-west@us-west-2",
		"-replica", "ads=media@us-west-2", "-replica", "media=ads-west@us-east-1",
		"-region-endpoint", "us-west-2", "-region-endpoint", "us-west-2=ftp://x", "-region-endpoint", "us-west-2=http://127.0.0.1:9000/path",
	}, envFrom(staticEnv()), io.Discard, io.Discard)
	var ce configError
	if !errors.As(err, &ce) {
		t.Fatalf("run = %v, want a configError (exit 2)", err)
	}
	for _, want := range []string{
		`-replica "other=other-west@us-west-2": primary other is neither -bucket nor a -route bucket`,
		`-replica "media=media@us-west-2": the replica is the primary itself`,
		`-replica "media=media-west": must be PRIMARY=REPLICA@REGION`,
		`-replica "media=media-west@US_WEST": region "US_WEST": must look like us-west-2`,
		`-replica "ads=ads-west@us-west-2": given twice`,
		`-replica "ads=media@us-west-2": the replica media is also served as a bucket in -region eu-west-1, not in us-west-2`,
		`-replica "media=ads-west@us-east-1": the replica ads-west is given in two regions, us-west-2 and us-east-1`,
		`-region-endpoint "us-west-2": must be REGION=URL`,
		`-region-endpoint "us-west-2=ftp://x": must be an http:// or https:// URL`,
		`-region-endpoint "us-west-2=http://127.0.0.1:9000/path": must have no path`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("validation error lacks %q:\n%v", want, err)
		}
	}
	if n := strings.Count(err.Error(), "\n  -replica") + strings.Count(err.Error(), "\n  -region-endpoint"); n != 10 {
		t.Errorf("%d replica problems reported, want 10:\n%v", n, err)
	}
}

func TestReplicaRoutes(t *testing.T) {
	endpoint, _ := url.Parse("https://s3.eu-west-1.amazonaws.com")
	west, _ := url.Parse("http://127.0.0.1:9002")
	routes := withReplicas(buildRoutes([]routeSpec{{"/", "media", "vod/"}, {"/ads/", "ads", ""}}, endpoint, false, false),
		map[string][]replicaSpec{"media": {{"media-west", "us-west-2"}, {"media-south", "ap-south-1"}}},
		map[string]*url.URL{"us-west-2": west}, false)
	media := routes[1]
	if media.bucket != "media" || len(media.replicas) != 2 || media.health == nil || routes[0].health != nil {
		t.Fatalf("routes %+v", routes)
	}
	// Two routes to one bucket share its health and its replicas'.
	two := withReplicas(buildRoutes([]routeSpec{{"/", "media", ""}, {"/vod/", "media", "vod/"}}, endpoint, false, false),
		map[string][]replicaSpec{"media": {{"media-west", "us-west-2"}}}, nil, false)
	if two[0].health != two[1].health || two[0].replicas[0].health != two[1].replicas[0].health {
		t.Error("two routes to one bucket keep separate health")
	}
	w, s := media.replicas[0], media.replicas[1]
	if w.host != "127.0.0.1:9002" || w.scheme != "http" || w.uri("k") != "/media-west/vod/k" || w.region != "us-west-2" {
		t.Errorf("replica behind -region-endpoint: host %q scheme %q uri %q region %q", w.host, w.scheme, w.uri("k"), w.region)
	}
	if s.host != "media-south.s3.ap-south-1.amazonaws.com" || s.scheme != "https" || s.uri("k") != "/vod/k" {
		t.Errorf("replica at AWS's endpoint: host %q scheme %q uri %q", s.host, s.scheme, s.uri("k"))
	}
}

// TestPprofTakesThePassedAdminSocket: -pprof needs an admin listener, and
// the admin socket systemd passes is one (with it, -admin is an error, so
// -pprof must not require it); without one, -pprof is refused.
func TestPprofTakesThePassedAdminSocket(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := []struct {
		name    string
		env     map[string]string
		refused bool
	}{
		{"admin socket passed", map[string]string{"LISTEN_PID": pid, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "proxy:admin"}, false},
		{"only the proxy socket passed", map[string]string{"LISTEN_PID": pid, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "proxy"}, true},
		{"sockets for another process", map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "proxy:admin"}, true},
		{"no socket passed", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig([]string{"-bucket", "media", "-region", "us-east-1", "-pprof"}, envFrom(tt.env), io.Discard)
			refused := err != nil && strings.Contains(err.Error(), `-pprof "true": needs -admin, or an admin socket passed by systemd`)
			if refused != tt.refused || !refused && err != nil {
				t.Errorf("loadConfig = %v, want refused %v", err, tt.refused)
			}
		})
	}
}
