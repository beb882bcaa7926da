package main

// A strict reader of the YAML subset deploy/ is written in, so the tests
// can check the Kubernetes example and the alert rules with the standard
// library only. It takes block mappings and block sequences (a sequence may
// sit at its key's indentation, as Kubernetes manifests write them), plain,
// 'single' and "double" quoted scalars, literal blocks (| and |-), the
// empty flow collections {} and [], comments and documents split by ---.
// Every scalar is a string: the tests compare text, as a reader that
// guesses types (the Norway problem) would not. Anything else is an error
// naming the line: tabs, anchors, aliases, tags, flow collections, folded
// blocks, complex keys, duplicate keys, a key without a value, a plain
// scalar that spans lines or holds ": ". A file that uses more YAML than
// this fails its test instead of being half read.

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// yamlLine is one line of a document: its number in the file, its
// indentation in spaces and its text after the indentation.
type yamlLine struct {
	number, indent int
	text           string
}

// yamlParser walks the lines of one document.
type yamlParser struct {
	lines []yamlLine
	i     int
}

// yamlKey is a mapping key the subset takes: Kubernetes and Prometheus
// keys, annotations and labels included.
var yamlKey = regexp.MustCompile(`^([A-Za-z0-9_./-]+):(?: +|$)`)

// parseYAMLDocuments reads every document of a file in the subset; each is
// a map[string]any, a []any or a string.
func parseYAMLDocuments(text string) ([]any, error) {
	var docs []any
	var current []yamlLine
	flush := func() error {
		p := &yamlParser{lines: current}
		current = nil
		if !p.skipBlank() {
			return nil
		}
		v, err := p.node(p.lines[p.i].indent)
		if err != nil {
			return err
		}
		if p.skipBlank() {
			return p.errorf("unexpected text after the document (wrong indentation?)")
		}
		docs = append(docs, v)
		return nil
	}
	for n, raw := range strings.Split(text, "\n") {
		raw = strings.TrimRight(raw, " \r")
		if raw == "---" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		body := strings.TrimLeft(raw, " ")
		if strings.HasPrefix(body, "\t") {
			return nil, fmt.Errorf("line %d: a tab in the indentation", n+1)
		}
		current = append(current, yamlLine{number: n + 1, indent: len(raw) - len(body), text: body})
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return docs, nil
}

// blank reports whether a line holds nothing outside a literal block.
func (l yamlLine) blank() bool { return l.text == "" || strings.HasPrefix(l.text, "#") }

// skipBlank moves past blank and comment lines; false at the end.
func (p *yamlParser) skipBlank() bool {
	for p.i < len(p.lines) && p.lines[p.i].blank() {
		p.i++
	}
	return p.i < len(p.lines)
}

func (p *yamlParser) errorf(format string, args ...any) error {
	n := 0
	if p.i < len(p.lines) {
		n = p.lines[p.i].number
	} else if len(p.lines) > 0 {
		n = p.lines[len(p.lines)-1].number
	}
	return fmt.Errorf("line %d: %s", n, fmt.Sprintf(format, args...))
}

// isItem reports whether a line starts a sequence item.
func isItem(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

// node reads the mapping or sequence whose lines sit at indent.
func (p *yamlParser) node(indent int) (any, error) {
	if isItem(p.lines[p.i].text) {
		return p.sequence(indent)
	}
	return p.mapping(indent)
}

// mapping reads key: value lines at indent.
func (p *yamlParser) mapping(indent int) (map[string]any, error) {
	m := map[string]any{}
	for p.skipBlank() {
		l := p.lines[p.i]
		if l.indent < indent || l.indent == indent && isItem(l.text) {
			break
		}
		if l.indent > indent {
			return nil, p.errorf("unexpected indentation")
		}
		match := yamlKey.FindStringSubmatch(l.text)
		if match == nil {
			return nil, p.errorf("want key: value, got %q", l.text)
		}
		key := match[1]
		if _, dup := m[key]; dup {
			return nil, p.errorf("key %q given twice", key)
		}
		rest := l.text[len(match[0]):]
		p.i++
		v, err := p.value(indent, rest, true)
		if err != nil {
			return nil, err
		}
		m[key] = v
	}
	return m, nil
}

// sequence reads "- item" lines at indent.
func (p *yamlParser) sequence(indent int) ([]any, error) {
	var s []any
	for p.skipBlank() {
		l := p.lines[p.i]
		if l.indent < indent || l.indent == indent && !isItem(l.text) {
			break
		}
		if l.indent > indent {
			return nil, p.errorf("unexpected indentation")
		}
		rest := strings.TrimPrefix(strings.TrimPrefix(l.text, "-"), " ")
		spaces := len(rest) - len(strings.TrimLeft(rest, " "))
		rest = rest[spaces:]
		if yamlKey.MatchString(rest) {
			// "- key: value" opens a mapping at the item's text.
			p.lines[p.i] = yamlLine{number: l.number, indent: indent + 2 + spaces, text: rest}
			m, err := p.mapping(indent + 2 + spaces)
			if err != nil {
				return nil, err
			}
			s = append(s, m)
			continue
		}
		p.i++
		v, err := p.value(indent, rest, false)
		if err != nil {
			return nil, err
		}
		s = append(s, v)
	}
	return s, nil
}

// value reads what follows a key (or a dash) at indent: a scalar on the
// line, a literal block, or a node on the lines below. A mapping's value
// may be a sequence at the key's own indentation.
func (p *yamlParser) value(indent int, rest string, ofKey bool) (any, error) {
	switch stripped := stripComment(rest); stripped {
	case "":
		if !p.skipBlank() {
			return nil, p.errorf("a key without a value")
		}
		next := p.lines[p.i]
		if next.indent > indent || ofKey && next.indent == indent && isItem(next.text) {
			return p.node(next.indent)
		}
		return nil, p.errorf("a key without a value")
	case "|", "|-":
		return p.literal(indent, stripped == "|-"), nil
	case "{}":
		return map[string]any{}, nil
	case "[]":
		return []any{}, nil
	}
	s, err := scalar(rest)
	if err != nil {
		return nil, p.errorf("%v", err)
	}
	// A plain scalar that goes on below would be read as more lines of it.
	if p.skipBlank() && p.lines[p.i].indent > indent && !isItem(p.lines[p.i].text) && !yamlKey.MatchString(p.lines[p.i].text) {
		return nil, p.errorf("a scalar that spans lines: quote it or use |")
	}
	return s, nil
}

// literal reads a | block: the lines indented deeper than indent, with
// the first one's indentation removed and, for |- (strip), no final
// newline.
func (p *yamlParser) literal(indent int, strip bool) string {
	var lines []string
	cut := -1
	for ; p.i < len(p.lines); p.i++ {
		l := p.lines[p.i]
		if l.text != "" && l.indent <= indent {
			break
		}
		if l.text == "" {
			lines = append(lines, "")
			continue
		}
		if cut < 0 {
			cut = l.indent
		}
		lines = append(lines, strings.Repeat(" ", max(l.indent-cut, 0))+l.text)
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	text := strings.Join(lines, "\n")
	if !strip {
		text += "\n"
	}
	return text
}

// stripComment removes a trailing comment from a plain value (a '#' after
// a space); quoted values are left whole for scalar.
func stripComment(s string) string {
	if strings.HasPrefix(s, `"`) || strings.HasPrefix(s, "'") {
		return s
	}
	if i := strings.Index(s, " #"); i >= 0 {
		s = s[:i]
	}
	if strings.HasPrefix(s, "#") {
		return ""
	}
	return strings.TrimRight(s, " ")
}

// scalar reads a plain, single-quoted or double-quoted scalar and what
// may follow it on its line (a comment).
func scalar(s string) (string, error) {
	switch {
	case strings.HasPrefix(s, `"`):
		end := closingQuote(s, '"')
		if end < 0 {
			return "", fmt.Errorf("an unterminated double-quoted scalar")
		}
		v, err := strconv.Unquote(s[:end+1])
		if err != nil {
			return "", fmt.Errorf("a double-quoted scalar: %v", err)
		}
		return v, trailing(s[end+1:])
	case strings.HasPrefix(s, "'"):
		end := closingQuote(s, '\'')
		if end < 0 {
			return "", fmt.Errorf("an unterminated single-quoted scalar")
		}
		return strings.ReplaceAll(s[1:end], "''", "'"), trailing(s[end+1:])
	}
	v := stripComment(s)
	switch {
	case v == "":
		return "", fmt.Errorf("an empty value")
	case strings.ContainsAny(v[:1], "&*!|>%@`{[?,]}"):
		return "", fmt.Errorf("%q starts with %q, which the subset does not take (anchors, aliases, tags, flow collections, folded blocks)", v, v[:1])
	case strings.Contains(v, ": ") || strings.HasSuffix(v, ":"):
		return "", fmt.Errorf("%q: a plain scalar with ': ' (quote it)", v)
	}
	return v, nil
}

// closingQuote is the index of the quote that ends s, which starts with q.
func closingQuote(s string, q byte) int {
	for i := 1; i < len(s); i++ {
		switch {
		case q == '"' && s[i] == '\\':
			i++
		case q == '\'' && s[i] == '\'' && i+1 < len(s) && s[i+1] == '\'':
			i++
		case s[i] == q:
			return i
		}
	}
	return -1
}

// trailing accepts only a comment after a quoted scalar.
func trailing(s string) error {
	if t := strings.TrimLeft(s, " "); t != "" && (!strings.HasPrefix(t, "#") || t == s) {
		return fmt.Errorf("text after a quoted scalar: %q", s)
	}
	return nil
}

// yamlPath follows keys (and [N] indexes, as "containers.0") into a
// document; ok is false when a step is missing.
func yamlPath(v any, path string) (any, bool) {
	for step := range strings.SplitSeq(path, ".") {
		switch node := v.(type) {
		case map[string]any:
			next, ok := node[step]
			if !ok {
				return nil, false
			}
			v = next
		case []any:
			i, err := strconv.Atoi(step)
			if err != nil || i < 0 || i >= len(node) {
				return nil, false
			}
			v = node[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// yamlString is the string at path, or "".
func yamlString(v any, path string) string {
	s, _ := yamlPathOf[string](v, path)
	return s
}

// yamlPathOf is the value at path when it has type T.
func yamlPathOf[T any](v any, path string) (T, bool) {
	got, ok := yamlPath(v, path)
	t, isT := got.(T)
	return t, ok && isT
}

func TestYAMLSubset(t *testing.T) {
	doc := `# a comment
kind: Deployment   # trailing comment
metadata:
  name: "vod"
  annotations:
    eks.amazonaws.com/role-arn: arn:aws:iam::111122223333:role/r
    quoted: 'it''s'
spec:
  containers:
  - name: s3-helper
    args:
      - -listen
      - "127.0.0.1:8080"
    env: []
    empty: {}
  - name: nginx
    script: |
      line one
        indented # not a comment

      last
    strip: |-
      x
---
second: doc
`
	docs, err := parseYAMLDocuments(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 {
		t.Fatalf("%d documents, want 2", len(docs))
	}
	d := docs[0]
	for path, want := range map[string]string{
		"kind":                        "Deployment",
		"metadata.name":               "vod",
		"metadata.annotations.quoted": "it's",
		"spec.containers.0.name":      "s3-helper",
		"spec.containers.0.args.0":    "-listen",
		"spec.containers.0.args.1":    "127.0.0.1:8080",
		"spec.containers.1.name":      "nginx",
		"spec.containers.1.script":    "line one\n  indented # not a comment\n\nlast\n",
		"spec.containers.1.strip":     "x",
	} {
		if got := yamlString(d, path); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	// A key with dots is read from its map.
	if ann, _ := yamlPathOf[map[string]any](d, "metadata.annotations"); ann["eks.amazonaws.com/role-arn"] != "arn:aws:iam::111122223333:role/r" {
		t.Errorf("annotations = %v", ann)
	}
	if env, ok := yamlPathOf[[]any](d, "spec.containers.0.env"); !ok || len(env) != 0 {
		t.Errorf("env = %v, want an empty sequence", env)
	}
	if yamlString(docs[1], "second") != "doc" {
		t.Errorf("second document = %v", docs[1])
	}

	for _, bad := range []struct{ name, text string }{
		{"tab", "a:\n\tb: c\n"},
		{"anchor", "a: &x b\n"},
		{"alias", "a: *x\n"},
		{"tag", "a: !!str b\n"},
		{"flow sequence", "a: [b, c]\n"},
		{"flow mapping", "a: {b: c}\n"},
		{"folded block", "a: >\n  b\n"},
		{"complex key", "? a\n: b\n"},
		{"duplicate key", "a: b\na: c\n"},
		{"key without value", "a:\nb: c\n"},
		{"multi-line plain scalar", "a: b\n  c\n"},
		{"colon in plain scalar", "a: b: c\n"},
		{"unterminated quote", "a: \"b\n"},
		{"text after quote", "a: \"b\" c\n"},
		{"bad indentation", "a:\n    b: c\n  d: e\n"},
	} {
		if _, err := parseYAMLDocuments(bad.text); err == nil {
			t.Errorf("%s: %q parsed, want an error", bad.name, bad.text)
		}
	}
}
