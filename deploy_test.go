package main

// What deploy/ promises operators, checked without a cluster: the
// Kubernetes example's invariants (a native sidecar on loopback, probes on
// the admin port, the hardening, the limits, a grace period longer than the
// drain) with flags and variables the real parser accepts.

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const kubernetesExample = "deploy/kubernetes/s3-helper.yaml"

// TestKubernetesExample reads the example with the strict YAML subset and
// checks each invariant the README states for it.
func TestKubernetesExample(t *testing.T) {
	raw, err := os.ReadFile(kubernetesExample)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := parseYAMLDocuments(string(raw))
	if err != nil {
		t.Fatalf("%s: %v", kubernetesExample, err)
	}
	byKind := map[string]any{}
	for _, d := range docs {
		kind := yamlString(d, "kind")
		if kind == "" || yamlString(d, "apiVersion") == "" || yamlString(d, "metadata.name") == "" {
			t.Fatalf("a document without apiVersion, kind or metadata.name: %v", d)
		}
		byKind[kind] = d
	}
	for _, kind := range []string{"ServiceAccount", "ConfigMap", "Deployment", "Service"} {
		if byKind[kind] == nil {
			t.Fatalf("%s has no %s", kubernetesExample, kind)
		}
	}

	// Credentials: IRSA on the pod's service account; Pod Identity shown.
	account := yamlString(byKind["ServiceAccount"], "metadata.name")
	annotations, _ := yamlPathOf[map[string]any](byKind["ServiceAccount"], "metadata.annotations")
	if role, _ := annotations["eks.amazonaws.com/role-arn"].(string); !isRoleARN(role) {
		t.Errorf("the service account's eks.amazonaws.com/role-arn = %q, want a role ARN (IRSA)", role)
	}
	if !strings.Contains(string(raw), "aws eks create-pod-identity-association") || !strings.Contains(string(raw), "--service-account "+account) {
		t.Error("the Pod Identity alternative (aws eks create-pod-identity-association for the service account) is not shown")
	}
	pod, _ := yamlPathOf[map[string]any](byKind["Deployment"], "spec.template.spec")
	if got := yamlString(pod, "serviceAccountName"); got != account {
		t.Errorf("the pod's serviceAccountName = %q, want %q", got, account)
	}

	// s3-helper is a native sidecar: an init container that keeps running.
	sidecar := containerNamed(pod, "initContainers", "s3-helper")
	if sidecar == nil {
		t.Fatal("no init container named s3-helper")
	}
	if containerNamed(pod, "containers", "s3-helper") != nil {
		t.Error("s3-helper is also among the app containers")
	}
	if got := yamlString(sidecar, "restartPolicy"); got != "Always" {
		t.Errorf("s3-helper's restartPolicy = %q, want Always (a native sidecar: it starts before nginx and stops after it)", got)
	}
	if image := yamlString(sidecar, "image"); !strings.HasSuffix(image, "/s3-helper:"+releaseVersion) {
		t.Errorf("s3-helper's image = %q, want .../s3-helper:%s, the release make image builds", image, releaseVersion)
	}
	nginx := containerNamed(pod, "containers", "nginx")
	if nginx == nil {
		t.Fatal("no container named nginx")
	}

	// Its flags and S3_HELPER_* variables are real, and the real parser
	// takes their values.
	args := stringList(t, sidecar, "args")
	env := map[string]string{}
	envList, _ := yamlPathOf[[]any](sidecar, "env")
	flags := newFlagSet(&config{}, io.Discard)
	for _, e := range envList {
		name, value := yamlString(e, "name"), yamlString(e, "value")
		env[name] = value
		if flag, ok := strings.CutPrefix(name, envPrefix); ok {
			if flags.Lookup(strings.ToLower(strings.ReplaceAll(flag, "_", "-"))) == nil {
				t.Errorf("env %s names no flag", name)
			}
		}
	}
	for _, a := range args {
		if name, ok := strings.CutPrefix(a, "-"); ok && flags.Lookup(strings.TrimLeft(strings.SplitN(name, "=", 2)[0], "-")) == nil {
			t.Errorf("args: %s is no flag", a)
		}
	}
	cfg, err := loadConfig(args, envFrom(env), io.Discard)
	if err != nil {
		t.Fatalf("s3-helper refuses the example's configuration: %v", err)
	}
	host, listenPort, err := net.SplitHostPort(cfg.listenAddress)
	if cfg.listenNetwork != "tcp" || err != nil || !isLoopbackHost(host) {
		t.Errorf("-listen %q, want 127.0.0.1:PORT: inside the pod only nginx may reach the proxy", cfg.listen)
	}
	_, adminPort, err := net.SplitHostPort(cfg.admin)
	if err != nil {
		t.Fatalf("-admin %q: the probes and Prometheus need the admin listener", cfg.admin)
	}

	// Probes: startup and readiness on the admin port's /healthz.
	for _, probe := range []string{"startupProbe", "readinessProbe"} {
		if path := yamlString(sidecar, probe+".httpGet.path"); path != "/healthz" {
			t.Errorf("%s path = %q, want /healthz", probe, path)
		}
		if port := portOf(sidecar, yamlString(sidecar, probe+".httpGet.port")); port != adminPort {
			t.Errorf("%s port = %q, want the admin port %s", probe, port, adminPort)
		}
	}
	annotations, _ = yamlPathOf[map[string]any](byKind["Deployment"], "spec.template.metadata.annotations")
	if got := annotations["prometheus.io/port"]; got != adminPort {
		t.Errorf("prometheus.io/port = %v, want the admin port %s", got, adminPort)
	}

	// nginx reaches s3-helper where it listens and serves on its own port.
	data, _ := yamlPathOf[map[string]any](byKind["ConfigMap"], "data")
	conf, _ := data["nginx.conf"].(string)
	if m := regexp.MustCompile(`server 127\.0\.0\.1:(\d+);`).FindStringSubmatch(conf); m == nil || m[1] != listenPort {
		t.Errorf("nginx.conf's upstream = %v, want server 127.0.0.1:%s (s3-helper's -listen)", m, listenPort)
	}
	if m := regexp.MustCompile(`(?m)^\s*listen (\d+);`).FindStringSubmatch(conf); m == nil || m[1] != portOf(nginx, "http") {
		t.Errorf("nginx.conf listens on %v, want the nginx container's http port %s", m, portOf(nginx, "http"))
	}

	// Hardening, for both containers: the container's setting, else the pod's.
	for _, c := range []map[string]any{sidecar, nginx} {
		name := yamlString(c, "name")
		setting := func(key string) string {
			if v := yamlString(c, "securityContext."+key); v != "" {
				return v
			}
			return yamlString(pod, "securityContext."+key)
		}
		for key, want := range map[string]string{"runAsNonRoot": "true", "readOnlyRootFilesystem": "true",
			"allowPrivilegeEscalation": "false", "seccompProfile.type": "RuntimeDefault"} {
			if got := setting(key); got != want {
				t.Errorf("%s: securityContext.%s = %q, want %q", name, key, got, want)
			}
		}
		if drop := stringList(t, c, "securityContext.capabilities.drop"); !slices.Equal(drop, []string{"ALL"}) {
			t.Errorf("%s: capabilities.drop = %q, want [ALL]", name, drop)
		}
		if uid := setting("runAsUser"); uid == "" || uid == "0" {
			t.Errorf("%s: runAsUser = %q, want a user other than root", name, uid)
		}
		for _, r := range []string{"requests.cpu", "requests.memory", "limits.memory"} {
			if yamlString(c, "resources."+r) == "" {
				t.Errorf("%s: no resources.%s", name, r)
			}
		}
	}
	if uid := yamlString(sidecar, "securityContext.runAsUser"); uid+":"+yamlString(sidecar, "securityContext.runAsGroup") != imageUser {
		t.Errorf("s3-helper runs as %s, want the image's user %s", uid, imageUser)
	}

	// Memory: Go's soft limit below the container's hard one.
	limit, err := kubernetesBytes(yamlString(sidecar, "resources.limits.memory"))
	if err != nil {
		t.Fatal(err)
	}
	soft, err := goMemLimitBytes(env["GOMEMLIMIT"])
	if err != nil {
		t.Errorf("GOMEMLIMIT %q: %v", env["GOMEMLIMIT"], err)
	} else if soft >= limit || soft < limit/2 {
		t.Errorf("GOMEMLIMIT %s = %d bytes, want below the memory limit (%d bytes) and above half of it", env["GOMEMLIMIT"], soft, limit)
	}

	// The kubelet's SIGKILL comes after the drain.
	grace, err := strconv.Atoi(yamlString(pod, "terminationGracePeriodSeconds"))
	if err != nil {
		t.Fatalf("terminationGracePeriodSeconds: %v", err)
	}
	if time.Duration(grace)*time.Second < cfg.shutdownTimeout+stopMargin {
		t.Errorf("terminationGracePeriodSeconds %d, want at least -shutdown-timeout %v plus %v", grace, cfg.shutdownTimeout, stopMargin)
	}
}

// containerNamed is the container called name in the pod's list (containers
// or initContainers), or nil.
func containerNamed(pod map[string]any, list, name string) map[string]any {
	cs, _ := yamlPathOf[[]any](pod, list)
	for _, c := range cs {
		if m, ok := c.(map[string]any); ok && m["name"] == name {
			return m
		}
	}
	return nil
}

// stringList is the sequence of strings at path.
func stringList(t *testing.T, v any, path string) []string {
	t.Helper()
	items, ok := yamlPathOf[[]any](v, path)
	if !ok {
		t.Errorf("no list at %s", path)
		return nil
	}
	var out []string
	for _, item := range items {
		s, ok := item.(string)
		if !ok {
			t.Errorf("%s holds %v, want strings", path, item)
		}
		out = append(out, s)
	}
	return out
}

// portOf resolves a probe's port, a number or a container port's name.
func portOf(container map[string]any, port string) string {
	if _, err := strconv.Atoi(port); err == nil {
		return port
	}
	ports, _ := yamlPathOf[[]any](container, "ports")
	for _, p := range ports {
		if yamlString(p, "name") == port {
			return yamlString(p, "containerPort")
		}
	}
	return ""
}

// kubernetesBytes reads a memory quantity in the binary suffixes the
// example uses (Ki, Mi, Gi).
func kubernetesBytes(q string) (int64, error) {
	return bytesWithSuffix(q, map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30})
}

// goMemLimitBytes reads GOMEMLIMIT's form (runtime/debug.SetMemoryLimit):
// a number of bytes with B, KiB, MiB or GiB.
func goMemLimitBytes(v string) (int64, error) {
	return bytesWithSuffix(v, map[string]int64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30})
}

func bytesWithSuffix(v string, units map[string]int64) (int64, error) {
	for suffix, unit := range units {
		if n, ok := strings.CutSuffix(v, suffix); ok {
			if f, err := strconv.ParseInt(n, 10, 64); err == nil && f > 0 {
				return f * unit, nil
			}
		}
	}
	return 0, &strconv.NumError{Func: "bytes", Num: v, Err: strconv.ErrSyntax}
}

const (
	alertRules     = "deploy/prometheus/s3-helper.rules.yml"
	alertRuleTests = "deploy/prometheus/s3-helper.rules.test.yml"
	dashboardFile  = "deploy/grafana/s3-helper.json"
)

// wantAlerts are the conditions the rules must cover, by alert name.
var wantAlerts = []string{
	"S3HelperBucketDown", "S3HelperAllCopiesDown", "S3HelperRetryBudgetEmpty", "S3HelperCredentialsExpiringSoon",
	"S3HelperCredentialRefreshFailing", "S3HelperExpiredCredentialsInUse", "S3HelperAccessRefused",
	"S3HelperServerErrors", "S3HelperHedgeRateAtCap",
}

// alertRule is one rule of the alert rules file.
type alertRule struct{ name, expr, severity, summary string }

// readAlertRules reads the rules file with the strict YAML subset.
func readAlertRules(t *testing.T) []alertRule {
	t.Helper()
	raw, err := os.ReadFile(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := parseYAMLDocuments(string(raw))
	if err != nil || len(docs) != 1 {
		t.Fatalf("%s: %v (%d documents)", alertRules, err, len(docs))
	}
	groups, _ := yamlPathOf[[]any](docs[0], "groups")
	var rules []alertRule
	for _, g := range groups {
		list, _ := yamlPathOf[[]any](g, "rules")
		for _, r := range list {
			rules = append(rules, alertRule{yamlString(r, "alert"), yamlString(r, "expr"), yamlString(r, "labels.severity"), yamlString(r, "annotations.summary")})
		}
	}
	if len(rules) == 0 {
		t.Fatalf("%s holds no rule", alertRules)
	}
	return rules
}

// TestAlertRules: Prometheus's own promtool accepts the rules and passes
// their unit tests (each alert firing on its condition and quiet on a
// healthy neighbour and before its "for"); every condition the README
// promises has an alert with a severity and a summary, and a runbook line
// in the README's "Alerts and dashboard".
func TestAlertRules(t *testing.T) {
	rules := readAlertRules(t)
	names := map[string]bool{}
	for _, r := range rules {
		if r.name == "" || r.expr == "" || (r.severity != "warning" && r.severity != "critical") || r.summary == "" {
			t.Errorf("rule %+v: want alert, expr, a severity of warning or critical, and a summary", r)
		}
		names[r.name] = true
	}
	for _, want := range wantAlerts {
		if !names[want] {
			t.Errorf("no alert %s", want)
		}
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, found := strings.Cut(string(readme), "\n## Alerts and dashboard\n")
	section, _, _ = strings.Cut(section, "\n## ")
	if !found {
		t.Fatal("README.md has no section \"Alerts and dashboard\"")
	}
	runbook := regexp.MustCompile("(?m)^- \\*\\*`(S3Helper[A-Za-z]+)`\\*\\* [^\\n]+")
	inREADME := map[string]bool{}
	for _, m := range runbook.FindAllStringSubmatch(section, -1) {
		inREADME[m[1]] = true
		if !names[m[1]] {
			t.Errorf("README's runbook names %s, which the rules do not have", m[1])
		}
	}
	for name := range names {
		if !inREADME[name] {
			t.Errorf("alert %s has no runbook line in the README (- **`%s`** ...)", name, name)
		}
	}

	needTools(t, "promtool")
	if out, err := exec.Command("promtool", "check", "rules", alertRules).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	test := exec.Command("promtool", "test", "rules", filepath.Base(alertRuleTests))
	test.Dir = filepath.Dir(alertRuleTests)
	out, err := test.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("promtool test rules:\n%s", out)
}

// dashboardQueries returns every PromQL query of the dashboard: each
// panel target's expr and each templating variable's query.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var queries []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, child := range v {
				if s, ok := child.(string); ok && (k == "expr" || k == "query" && strings.Contains(s, "(")) {
					queries = append(queries, s)
				}
				walk(child)
			}
		case []any:
			for _, child := range v {
				walk(child)
			}
		}
	}
	walk(dash)
	if len(queries) == 0 {
		t.Fatalf("%s holds no query", dashboardFile)
	}
	return queries
}

// TestDashboardQueries: Prometheus parses every query of the dashboard
// (promtool checks them as recording rules, Grafana's variables replaced
// by values), and the panels cover what the README promises.
func TestDashboardQueries(t *testing.T) {
	queries := dashboardQueries(t)
	joined := strings.Join(queries, "\n")
	for _, want := range []string{
		`by (status) (rate(s3helper_requests_total`,
		`histogram_quantile(0.99, sum by (le) (rate(s3helper_request_duration_seconds_bucket`,
		`histogram_quantile(0.99, sum by (le) (rate(s3helper_upstream_ttfb_seconds_bucket`,
		`by (kind) (rate(s3helper_upstream_errors_total`,
		`s3helper_upstream_retries_total`, `s3helper_upstream_hedges_total`, `s3helper_retry_budget_tokens`,
		`s3helper_upstream_budget_refused_total`, `s3helper_bucket_up`, `s3helper_credential_expiry_seconds`,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("no dashboard query has %q", want)
		}
	}

	needTools(t, "promtool")
	grafana := strings.NewReplacer("$__rate_interval", "5m", "$job", ".*", "$instance", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n- name: dashboard\n  rules:\n")
	n := 0
	for _, q := range queries {
		if strings.HasPrefix(q, "label_values(") { // Grafana's, not PromQL
			inner := strings.TrimSuffix(strings.TrimPrefix(q, "label_values("), ")")
			q = inner[:strings.LastIndex(inner, ",")]
		}
		n++
		fmt.Fprintf(&rules, "  - record: dashboard:query_%d\n    expr: %s\n", n, strconv.Quote(grafana.Replace(q)))
	}
	file := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "check", "rules", file).CombinedOutput(); err != nil {
		t.Errorf("promtool does not parse the dashboard's queries: %v\n%s\n%s", err, out, rules.String())
	}
}

// TestDeployMetricNames: every metric the alert rules, their unit tests
// and the dashboard name is one s3-helper exports (metricTable, with the
// s3helper_ prefix; _bucket, _sum and _count for histograms), with its own
// labels only and, where a label has a fixed set of values, values from
// it. A renamed metric or label breaks the build, not the alerts.
func TestDeployMetricNames(t *testing.T) {
	series := promSeries()
	var exprs []string
	for _, r := range readAlertRules(t) {
		exprs = append(exprs, r.expr)
	}
	ruleTests, err := os.ReadFile(alertRuleTests)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`series: '([^']*)'`).FindAllStringSubmatch(string(ruleTests), -1) {
		exprs = append(exprs, m[1])
	}
	exprs = append(exprs, dashboardQueries(t)...)
	for _, expr := range exprs {
		for _, problem := range checkPromQL(expr, series) {
			t.Errorf("%s\n  in %s", problem, expr)
		}
	}
	// Free text too (comments, summaries, descriptions) names only real
	// metric families.
	for _, file := range []string{alertRules, alertRuleTests, dashboardFile, "README.md"} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range regexp.MustCompile(`\bs3helper_[A-Za-z0-9_]+`).FindAllString(string(raw), -1) {
			if series[name].def == nil && series[name+"_bucket"].def == nil {
				t.Errorf("%s names %s, which s3-helper does not export", file, name)
			}
		}
	}
}

// exportedSeries is one series name s3-helper exports and its labels.
type exportedSeries struct {
	def    *metricDef
	labels map[string][]string // label → its fixed values; nil: any value
}

// promSeries lists every series name /metrics carries. Every series also
// has the scrape's job and instance.
func promSeries() map[string]exportedSeries {
	all := map[string]exportedSeries{}
	for id := range metricTable {
		d := &metricTable[id]
		if d.outputs&toPrometheus == 0 {
			continue
		}
		labels := map[string][]string{"job": nil, "instance": nil}
		for _, l := range d.labels {
			labels[l.name] = l.values
		}
		base := promPrefix + d.prom
		if d.kind != durationKind {
			all[base] = exportedSeries{d, labels}
			continue
		}
		for _, suffix := range []string{"_sum", "_count"} {
			all[base+suffix] = exportedSeries{d, labels}
		}
		withLE := maps.Clone(labels)
		withLE["le"] = nil
		all[base+"_bucket"] = exportedSeries{d, withLE}
	}
	return all
}

// checkPromQL names each problem with the metrics of one PromQL
// expression: unknown names, labels a metric does not have, values
// outside a label's fixed set, and by/without labels none of its metrics
// has. An expression with no s3-helper metric is a problem too.
func checkPromQL(expr string, series map[string]exportedSeries) []string {
	var problems []string
	selector := regexp.MustCompile(`\b(s3helper_[A-Za-z0-9_]+)\s*(\{[^}]*\})?`)
	matcher := regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$`)
	usable := map[string]bool{}
	found := selector.FindAllStringSubmatch(expr, -1)
	if len(found) == 0 {
		problems = append(problems, "no s3-helper metric")
	}
	for _, m := range found {
		s, ok := series[m[1]]
		if !ok {
			problems = append(problems, m[1]+" is not a series s3-helper exports")
			continue
		}
		for l := range s.labels {
			usable[l] = true
		}
		if m[2] == "" {
			continue
		}
		for _, part := range splitMatchers(m[2][1 : len(m[2])-1]) {
			mm := matcher.FindStringSubmatch(part)
			if mm == nil {
				problems = append(problems, fmt.Sprintf("%s: matcher %q is not label op \"value\"", m[1], part))
				continue
			}
			values, has := s.labels[mm[1]]
			switch {
			case !has:
				problems = append(problems, fmt.Sprintf("%s has no label %q", m[1], mm[1]))
			case values == nil:
			case mm[2] == "=" || mm[2] == "!=":
				if !slices.Contains(values, mm[3]) {
					problems = append(problems, fmt.Sprintf("%s{%s}: %q is none of %v", m[1], mm[1], mm[3], values))
				}
			default:
				re, err := regexp.Compile("^(?:" + mm[3] + ")$")
				if err != nil || !slices.ContainsFunc(values, re.MatchString) {
					problems = append(problems, fmt.Sprintf("%s{%s}: %q matches none of %v", m[1], mm[1], mm[3], values))
				}
			}
		}
	}
	for _, m := range regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`).FindAllStringSubmatch(expr, -1) {
		for l := range strings.SplitSeq(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !usable[l] {
				problems = append(problems, fmt.Sprintf("by/without (%s): no metric of the expression has label %q", m[1], l))
			}
		}
	}
	return problems
}

// splitMatchers splits a selector's matchers on the commas outside quotes.
func splitMatchers(s string) []string {
	var parts []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && quoted:
			i++
		case s[i] == '"':
			quoted = !quoted
		case s[i] == ',' && !quoted:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	if rest := strings.TrimSpace(s[start:]); rest != "" {
		parts = append(parts, s[start:])
	}
	return parts
}

// TestCheckPromQL: the checker itself catches each kind of drift.
func TestCheckPromQL(t *testing.T) {
	series := promSeries()
	tests := []struct {
		expr string
		want string // "" for none
	}{
		{`sum by (status) (rate(s3helper_requests_total{status=~"5..",job="x"}[5m]))`, ""},
		{`histogram_quantile(0.9, sum by (le) (rate(s3helper_request_duration_seconds_bucket[5m])))`, ""},
		{`rate(s3helper_request_total[5m])`, "s3helper_request_total is not a series"},
		{`s3helper_request_duration_seconds`, "is not a series"},
		{`s3helper_upstream_errors_total{kind="connect_error"}`, `"connect_error" is none of`},
		{`s3helper_upstream_errors_total{reason="connect"}`, `has no label "reason"`},
		{`s3helper_upstream_budget_refused_total{what=~"retries|hedges"}`, "matches none of"},
		{`sum by (bucket) (s3helper_retry_budget_tokens)`, `no metric of the expression has label "bucket"`},
		{`sum by (le) (s3helper_request_duration_seconds_count)`, `label "le"`},
		{`up == 0`, "no s3-helper metric"},
	}
	for _, tt := range tests {
		problems := strings.Join(checkPromQL(tt.expr, series), "; ")
		if tt.want == "" && problems != "" || !strings.Contains(problems, tt.want) {
			t.Errorf("checkPromQL(%s) = %q, want %q", tt.expr, problems, tt.want)
		}
	}
}
