package main

// SigV4's canonical URI and query encoding and header trimming.

import (
	"net/url"
	"testing"
)

// TestCanonicalURI pins the S3 key encoding on the keys peers got wrong.
func TestCanonicalURI(t *testing.T) {
	tests := []struct{ key, want string }{
		{"test.txt", "/test.txt"},
		{"a b", "/a%20b"},
		{"a+b", "/a%2Bb"},
		{"100%", "/100%25"},
		{"lit%2Fslash", "/lit%252Fslash"},
		{"dir/sub/file", "/dir/sub/file"},
		{"~tilde-_.", "/~tilde-_."},
		{"(paren)", "/%28paren%29"},
		{"!*'", "/%21%2A%27"},
		{"=&;", "/%3D%26%3B"},
		{",:@$", "/%2C%3A%40%24"},
		{"#?", "/%23%3F"},
		{"é", "/%C3%A9"},
		{"中文", "/%E4%B8%AD%E6%96%87"},
		{"😀", "/%F0%9F%98%80"},
		{"a//b/./c/../d", "/a//b/./c/../d"},
		{"back\\slash", "/back%5Cslash"},
	}
	for _, tt := range tests {
		if got := canonicalURI(tt.key); got != tt.want {
			t.Errorf("canonicalURI(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
}

func TestCanonicalQuery(t *testing.T) {
	got := canonicalQuery(url.Values{"b": {"2 3"}, "a": {"x/y+z", "w"}, "response-content-type": {"video/mp4"}})
	const want = "a=w&a=x%2Fy%2Bz&b=2%203&response-content-type=video%2Fmp4"
	if got != want {
		t.Errorf("canonicalQuery = %q, want %q", got, want)
	}
}

func TestAppendTrimmed(t *testing.T) {
	tests := []struct{ in, want string }{
		{"value", "value"},
		{"  lead and trail  ", "lead and trail"},
		{"a   b\t\tc", "a b c"},
		{"\"a   b   c\"", "\"a b c\""},
		{"\t\n\v\r\f", ""},
		{"x\r\n y", "x y"},
	}
	for _, tt := range tests {
		if got := string(appendTrimmed(nil, tt.in)); got != tt.want {
			t.Errorf("appendTrimmed(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzCanonicalURI: for any key the canonical URI holds only unreserved
// bytes, '/' and %XX, decodes back to the key, and is stable.
func FuzzCanonicalURI(f *testing.F) {
	for _, seed := range []string{"a b", "a+b", "%2F", "é", "..", "//", "\x00", "\xff", "~!*'()"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, key string) {
		uri := canonicalURI(key)
		for i := 1; i < len(uri); i++ {
			c := uri[i]
			switch {
			case isUnreserved(c) || c == '/':
			case c == '%' && i+2 < len(uri) && isUpperHex(uri[i+1]) && isUpperHex(uri[i+2]):
				i += 2
			default:
				t.Fatalf("canonicalURI(%q) = %q: byte %q at %d is neither unreserved, '/' nor %%XX", key, uri, c, i)
			}
		}
		back, err := percentDecode(uri[1:])
		if err != nil || back != key {
			t.Fatalf("canonicalURI(%q) = %q decodes to %q, %v", key, uri, back, err)
		}
		if again := canonicalURI(key); again != uri {
			t.Fatalf("canonicalURI(%q) unstable: %q then %q", key, uri, again)
		}
	})
}
