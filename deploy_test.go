package main

// What deploy/ promises operators, checked without a cluster: the
// Kubernetes example's invariants (a native sidecar on loopback, probes on
// the admin port, the hardening, the limits, a grace period longer than the
// drain) with flags and variables the real parser accepts.

import (
	"io"
	"net"
	"os"
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
