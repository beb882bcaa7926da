package main

// Bounding text from outside the process before it reaches a log line, an
// error or a metric label.

import (
	"strings"
	"testing"
)

func TestClip(t *testing.T) {
	if got := clip("short", 10); got != "short" {
		t.Errorf("clip(short) = %q", got)
	}
	if got := clip(strings.Repeat("a", 30), 10); got != strings.Repeat("a", 10)+"…" {
		t.Errorf("clip(30 bytes, 10) = %q", got)
	}
}

func TestPrintable(t *testing.T) {
	if got := printable("line one\nline two\x7f\ttab"); got != "line one?line two??tab" {
		t.Errorf("printable = %q", got)
	}
	if got := printable(strings.Repeat("x", 1000)); len(got) != maxErrorTextBytes+len("…") {
		t.Errorf("printable of 1000 bytes has %d", len(got))
	}
}

func TestXMLWord(t *testing.T) {
	tests := []struct{ body, tag, want string }{
		{"<Error><Code>NoSuchKey</Code></Error>", "Code", "NoSuchKey"},
		{"<Error><Region>eu-west-1</Region></Error>", "Region", "eu-west-1"},
		{"<Error><Code>NoSuchKey</Code>", "Region", ""},
		{"<Code>two words</Code>", "Code", ""},
		{"<Code>" + strings.Repeat("A", 65) + "</Code>", "Code", ""},
		{"<Code>" + strings.Repeat("A", 64) + "</Code>", "Code", strings.Repeat("A", 64)},
		{"<Code>unterminated", "Code", ""},
		{"<Code></Code>", "Code", ""},
		{"<Code>tag:1|c</Code>", "Code", ""},
	}
	for _, tt := range tests {
		if got := xmlWord([]byte(tt.body), tt.tag); got != tt.want {
			t.Errorf("xmlWord(%.40q, %s) = %q, want %q", tt.body, tt.tag, got, tt.want)
		}
	}
}
