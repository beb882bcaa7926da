package main

// The credential type and the source choice: redaction everywhere, the
// SDKs' precedence.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestCredentialsRedaction(t *testing.T) {
	c := newCredentials("ASIAREDACT", testSecret, testToken, time.Now().Add(time.Hour), sourceIMDS)
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x", "%q"} {
		fmt.Fprintf(&out, verb+"\n", c)
		fmt.Fprintf(&out, verb+"\n", *c)
	}
	slog.New(slog.NewTextHandler(&out, nil)).Info("creds", "c", c, "v", *c)
	slog.New(slog.NewJSONHandler(&out, nil)).Info("creds", "c", c, "v", *c)
	j, _ := json.Marshal(c)
	out.Write(j)
	for _, secret := range []string{testSecret, testToken} {
		if strings.Contains(out.String(), secret) {
			t.Fatalf("a secret leaked through formatting:\n%s", out.String())
		}
	}
	if !strings.Contains(out.String(), "ASIAREDACT") {
		t.Errorf("the access key ID should stay visible for debugging:\n%s", out.String())
	}
}

func TestChooseSourcePrecedence(t *testing.T) {
	keys := map[string]string{"AWS_ACCESS_KEY_ID": "AKIAVALUE", "AWS_SECRET_ACCESS_KEY": "secret-value"}
	web := map[string]string{"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}
	rel := map[string]string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"}
	full := map[string]string{"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials"}
	merge := func(ms ...map[string]string) map[string]string {
		out := map[string]string{}
		for _, m := range ms {
			for k, v := range m {
				out[k] = v
			}
		}
		return out
	}
	tests := []struct {
		name    string
		env     map[string]string
		pin     string
		want    string
		wantErr string
	}{
		{"nothing set", nil, "", sourceIMDS, ""},
		{"keys win over everything", merge(keys, web, rel), "", sourceEnvironment, ""},
		{"half a key pair is not a source", map[string]string{"AWS_ACCESS_KEY_ID": "AKIAVALUE"}, "", sourceIMDS, ""},
		{"web identity before container", merge(web, rel), "", sourceWebIdentity, ""},
		{"web identity needs both variables", merge(map[string]string{"AWS_ROLE_ARN": "arn"}, rel), "", sourceContainer, ""},
		{"relative URI", rel, "", sourceContainer, ""},
		{"full URI", full, "", sourceContainer, ""},
		{"pin skips the earlier sources", merge(keys, rel), sourceContainer, sourceContainer, ""},
		{"pin imds", merge(keys, web), sourceIMDS, sourceIMDS, ""},
		{"auto is the default", merge(web), sourceAuto, sourceWebIdentity, ""},
		{"pinned source not configured", keys, sourceWebIdentity, "", "needs AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN"},
		{"unknown pin", nil, "sso", "", "must be auto, environment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := chooseSource(tt.pin, envFrom(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("chooseSource = %v, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.name != tt.want {
				t.Fatalf("chooseSource = %+v, %v; want %s", got, err, tt.want)
			}
			for _, v := range tt.env {
				if v != "" && strings.Contains(got.reason, v) {
					t.Errorf("reason %q quotes a value", got.reason)
				}
			}
		})
	}
}
