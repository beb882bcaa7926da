package main

// The command line: every problem at once with its form, -help, the
// S3_HELPER_* variables.

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

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

func TestCredentialFlagValidation(t *testing.T) {
	err := run(t.Context(), []string{"-bucket", "media", "-region", "eu-west-1", "-credentials", "container",
		"-assume-role", "role/x", "-role-session-name", "a b", "-sts-endpoint", "ftp://sts"},
		envFrom(map[string]string{"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://10.0.0.9/creds"}), io.Discard, io.Discard)
	for _, want := range []string{
		`$AWS_CONTAINER_CREDENTIALS_FULL_URI "http://10.0.0.9/creds": container endpoint host "10.0.0.9" resolves to 10.0.0.9`,
		`-assume-role "role/x": must be a role ARN`,
		`-role-session-name "a b": must be 2 to 64`,
		`-sts-endpoint "ftp://sts"`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("run = %v, want %q", err, want)
		}
	}
}

// TestOneProblemPerBadValue: a value that does not parse is one problem,
// not two (flag's Set leaves zero behind, which validation would judge as
// well: `-timeout "0s"`), and a problem with a value the environment set
// names the S3_HELPER_* variable and the text it held, not the flag.
func TestOneProblemPerBadValue(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"unparsable variable", nil, map[string]string{"S3_HELPER_TIMEOUT": "banana"},
			[]string{`$S3_HELPER_TIMEOUT "banana": must be a duration such as 5s, 250ms or 1m30s`}},
		{"unparsable flag", []string{"-timeout", "banana"}, nil,
			[]string{`-timeout "banana": must be a duration such as 5s, 250ms or 1m30s`}},
		{"unparsable number", nil, map[string]string{"S3_HELPER_RETRIES": "many"},
			[]string{`$S3_HELPER_RETRIES "many": must be a whole number such as 3`}},
		{"variable out of range", nil, map[string]string{"S3_HELPER_TIMEOUT": "1h"},
			[]string{`$S3_HELPER_TIMEOUT "1h": must be between 100ms and 5m`}},
		{"flag out of range wins over its variable", []string{"-timeout", "1h"}, map[string]string{"S3_HELPER_TIMEOUT": "2s"},
			[]string{`-timeout "1h0m0s": must be between 100ms and 5m`}},
		{"one element of a list variable", nil, map[string]string{"S3_HELPER_ROUTE": "/a/=bucket-a,c=d"},
			[]string{`$S3_HELPER_ROUTE "c=d": path prefix must start with '/'`}},
		{"a rule between variables", nil, map[string]string{"S3_HELPER_PPROF": "true"},
			[]string{`$S3_HELPER_PPROF "true": needs -admin`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-bucket", "media", "-region", "us-east-1"}, tt.args...)
			_, err := loadConfig(args, envFrom(tt.env), io.Discard)
			got := configProblems(err)
			if len(got) != len(tt.want) {
				t.Fatalf("loadConfig = %d problems, want %d:\n%v", len(got), len(tt.want), err)
			}
			for i, want := range tt.want {
				if !strings.HasPrefix(got[i].Error(), want) {
					t.Errorf("problem %d = %q, want it to start %q", i, got[i], want)
				}
			}
		})
	}
}

// TestEnvironmentVariablesChecked: an S3_HELPER_* variable that is no
// flag's is a configuration problem naming it, with the closest flag's
// variable when one is near; the one-shot flags are refused from the
// environment. Every problem comes at once, with the others.
func TestEnvironmentVariablesChecked(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"typo near a flag", map[string]string{"S3_HELPER_BUCKKET": "media"},
			[]string{"$S3_HELPER_BUCKKET: no flag has this variable; did you mean $S3_HELPER_BUCKET (-bucket)?"}},
		{"typo with a dash", map[string]string{"S3_HELPER_SHUTDOWN_TIMOUT": "10s"},
			[]string{"$S3_HELPER_SHUTDOWN_TIMOUT: no flag has this variable; did you mean $S3_HELPER_SHUTDOWN_TIMEOUT (-shutdown-timeout)?"}},
		{"nothing near", map[string]string{"S3_HELPER_COLOUR_SCHEME": "dark"},
			[]string{"$S3_HELPER_COLOUR_SCHEME: no flag has this variable (each S3_HELPER_* variable sets the flag of its name; see -help)"}},
		{"a flag's name in the wrong form", map[string]string{"S3_HELPER_log-level": "debug"},
			[]string{"$S3_HELPER_log-level: no flag has this variable; did you mean $S3_HELPER_LOG_LEVEL (-log-level)?"}},
		{"presign", map[string]string{"S3_HELPER_PRESIGN": "/a.mp4"},
			[]string{"$S3_HELPER_PRESIGN: -presign is given on the command line only", "bearer credential"}},
		{"check", map[string]string{"S3_HELPER_CHECK": "true"},
			[]string{"$S3_HELPER_CHECK: -check is given on the command line only"}},
		{"check-key", map[string]string{"S3_HELPER_CHECK_KEY": "/a.mp4"},
			[]string{"$S3_HELPER_CHECK_KEY: -check-key is given on the command line only"}},
		{"version", map[string]string{"S3_HELPER_VERSION": "true"},
			[]string{"$S3_HELPER_VERSION: -version is given on the command line only"}},
		{"all at once, in name order, with a bad value", map[string]string{"S3_HELPER_ZZZ": "1", "S3_HELPER_BUCKKET": "m", "S3_HELPER_TIMEOUT": "banana"},
			[]string{"$S3_HELPER_BUCKKET:", "$S3_HELPER_ZZZ:", `$S3_HELPER_TIMEOUT "banana"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig([]string{"-bucket", "media", "-region", "us-east-1"}, envFrom(tt.env), io.Discard)
			var ce configError
			if !errors.As(err, &ce) {
				t.Fatalf("loadConfig = %v, want a configError (exit 2)", err)
			}
			last := -1
			for _, want := range tt.want {
				i := strings.Index(err.Error(), want)
				if i < 0 {
					t.Errorf("error lacks %q:\n%v", want, err)
				} else if i < last {
					t.Errorf("%q comes before the problem listed ahead of it:\n%v", want, err)
				}
				last = i
			}
		})
	}

	// Known and empty variables are no problem, and a one-shot flag on the
	// command line still works.
	var stdout bytes.Buffer
	err := run(t.Context(), []string{"-version"}, envFrom(map[string]string{"S3_HELPER_BUCKET": "media", "S3_HELPER_ROUTE": "", "S3_HELPER_BUCKKET": ""}), &stdout, io.Discard)
	if err != nil || !strings.HasPrefix(stdout.String(), "s3-helper ") {
		t.Errorf("run -version = %v, %q; want the version", err, stdout.String())
	}
}

// TestEnvironment: the getenv main builds from os.Environ's form.
func TestEnvironment(t *testing.T) {
	getenv := getenvOf([]string{"PATH=/bin", "S3_HELPER_BUCKET=a=b", "S3_HELPER_BUCKET=shadowed", "S3_HELPER_X=", "broken", "=x"})
	for name, want := range map[string]string{"PATH": "/bin", "S3_HELPER_BUCKET": "a=b", "S3_HELPER_X": "", "broken": "", envNamesQuery: "S3_HELPER_BUCKET,S3_HELPER_X"} {
		if got := getenv(name); got != want {
			t.Errorf("getenv(%q) = %q, want %q", name, got, want)
		}
	}
}
