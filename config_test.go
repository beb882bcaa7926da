package main

// The command line and the configuration: every problem at once with its
// form, -help, the environment, -presign checked first, route addressing.

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestValidationReportsEveryProblem(t *testing.T) {
	var stderr bytes.Buffer
	err := run(t.Context(), []string{
		"-listen", "0.0.0.0:8080", "-admin", "10.0.0.1:9000", "-region", "US_EAST",
		"-endpoint", "ftp://s3", "-timeout", "1ms", "-retries", "-1", "-statsd", "nohost",
		"-log-format", "xml", "-log-level", "loud", "-route", "avod=b", "-prefix", "/abs",
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
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("validation error lacks %q:\n%v", want, err)
		}
	}
}

// TestCommandLineReportsEveryProblem: unparsable values and unknown flags
// are configuration errors (exit 2) reported together with the validation
// problems, in a few lines that give the expected form and point to -help.
func TestCommandLineReportsEveryProblem(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"bad duration and remote listen", []string{"-timeout", "banana", "-listen", "0.0.0.0:80", "-bucket", "media"}, nil,
			[]string{`-timeout "banana": must be a duration such as 5s`, `-listen "0.0.0.0:80": not a loopback address`}},
		{"unknown flag and bad number", []string{"-bukket", "media", "-retries=many", "--log-level", "debug"}, nil,
			[]string{"unknown flag -bukket", `-retries "many": must be a whole number`, `-bucket "": required`}},
		{"missing value and stray argument", []string{"-bucket", "media", "extra", "-timeout"}, nil,
			[]string{`unexpected argument "extra"`, "-timeout needs a value: a duration"}},
		{"bad bool", []string{"-bucket", "media", "-access-log=maybe"}, nil,
			[]string{`-access-log "maybe": must be true or false`}},
		{"environment", []string{"-bucket", "media"}, map[string]string{"S3_HELPER_TIMEOUT": "banana", "S3_HELPER_RETRIES": "x"},
			[]string{`$S3_HELPER_TIMEOUT "banana": must be a duration such as 5s`, `$S3_HELPER_RETRIES "x": must be a whole number`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tt.args, envFrom(tt.env), &stdout, &stderr)
			var ce configError
			if !errors.As(err, &ce) {
				t.Fatalf("run = %v, want a configError (exit 2)", err)
			}
			for _, want := range append(tt.want, "s3-helper -help") {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q:\n%v", want, err)
				}
			}
			if lines := strings.Count(err.Error(), "\n") + 1; lines > len(tt.want)+3 {
				t.Errorf("error has %d lines for %d problems:\n%v", lines, len(tt.want), err)
			}
			if stdout.Len()+stderr.Len() > 0 {
				t.Errorf("printed a usage dump besides the error:\n%s%s", stdout.String(), stderr.String())
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var stdout bytes.Buffer
	err := run(t.Context(), []string{"-help"}, envFrom(nil), &stdout, io.Discard)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -help = %v, want flag.ErrHelp (exit 0)", err)
	}
	first, _, _ := strings.Cut(stdout.String(), "\n")
	if !strings.HasPrefix(first, "s3-helper serves a private S3 bucket") {
		t.Errorf("help starts with %q, want what s3-helper is", first)
	}
	for _, want := range []string{"S3_HELPER_", "-refresh-before", "two thirds of it before"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("help lacks %q", want)
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

func TestEnvironmentFillsFlagsAndFlagsWin(t *testing.T) {
	cfg, err := parseConfig([]string{"-bucket", "from-flag"}, envFrom(map[string]string{
		"S3_HELPER_BUCKET":         "from-env",
		"S3_HELPER_REFRESH_BEFORE": "7m",
		"S3_HELPER_ROUTE":          "/a/=bucket-a,/b/=bucket-b/prefix",
		"S3_HELPER_ACCESS_LOG":     "true",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.bucket != "from-flag" || cfg.refreshBefore != 7*time.Minute || len(cfg.routes) != 2 || !cfg.accessLog {
		t.Errorf("config = bucket %q, refresh %v, routes %v, access log %v", cfg.bucket, cfg.refreshBefore, cfg.routes, cfg.accessLog)
	}
	_, err = parseConfig(nil, envFrom(map[string]string{"S3_HELPER_TIMEOUT": "soon"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), `$S3_HELPER_TIMEOUT "soon"`) {
		t.Errorf("bad env value: %v, want an error naming the variable", err)
	}
}

func TestBuildRoutesAddressing(t *testing.T) {
	aws := &url.URL{Scheme: "https", Host: "s3.eu-west-1.amazonaws.com"}
	tests := []struct {
		name, bucket string
		endpoint     *url.URL
		force        bool
		host, prefix string
	}{
		{"virtual-hosted", "media", aws, false, "media.s3.eu-west-1.amazonaws.com", ""},
		{"dots use path style", "my.media", aws, false, "s3.eu-west-1.amazonaws.com", "/my.media"},
		{"forced path style", "media", aws, true, "s3.eu-west-1.amazonaws.com", "/media"},
		{"IP endpoint", "media", &url.URL{Scheme: "http", Host: "127.0.0.1:7070"}, false, "127.0.0.1:7070", "/media"},
		{"legacy name", "Legacy_Bucket", aws, false, "s3.eu-west-1.amazonaws.com", "/Legacy_Bucket"},
	}
	for _, tt := range tests {
		r := buildRoutes([]routeSpec{{"/", tt.bucket, ""}}, tt.endpoint, tt.force)[0]
		if r.host != tt.host || r.uriPrefix != tt.prefix {
			t.Errorf("%s: host %q prefix %q, want %q %q", tt.name, r.host, r.uriPrefix, tt.host, tt.prefix)
		}
	}
	u, err := parseEndpoint("https://s3.example.com:443/")
	if err != nil || u.Host != "s3.example.com" {
		t.Errorf("parseEndpoint dropped nothing: %v, %v", u, err)
	}
}
