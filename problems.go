package main

// Configuration problems as the operator reads them: each names the flag,
// or the S3_HELPER_* variable that set it, the value (bounded) and the
// rule; configError lists them all at once. Nothing here reads the
// configuration itself: flags.go and config.go report here.

import (
	"fmt"
	"strings"
)

// listFlags take a comma-separated list in their S3_HELPER_* variable.
var listFlags = map[string]bool{"route": true, "replica": true, "region-endpoint": true}

// envSetting is a flag's S3_HELPER_* variable and the value it held, for
// a flag the environment set.
type envSetting struct{ variable, value string }

// problems collects configuration problems, each naming the flag, the
// value (bounded) and the rule.
type problems []error

// bad records that -flagName's value breaks rule.
func (p *problems) bad(flagName, value, rule string) {
	*p = append(*p, flagProblem{flag: flagName, value: value, rule: rule})
}

// flagProblem is a flag's value breaking a rule. When the value came from
// the flag's S3_HELPER_* variable, variable names it and value is what the
// variable held (one element of a list variable stays that element).
type flagProblem struct {
	flag, variable, value, rule string
}

// Error names the flag, or the variable that set it, the value and the rule.
func (fp flagProblem) Error() string {
	if fp.variable != "" {
		return fmt.Sprintf("$%s %q: %s", fp.variable, clip(fp.value, maxQuotedValueBytes), fp.rule)
	}
	return fmt.Sprintf("-%s %q: %s", fp.flag, clip(fp.value, maxQuotedValueBytes), fp.rule)
}

// namingVariables rewrites each problem with a flag the environment set
// to name its S3_HELPER_* variable and the text the variable held.
func (p problems) namingVariables(fromEnv map[string]envSetting) {
	for i, err := range p {
		fp, ok := err.(flagProblem)
		env, set := fromEnv[fp.flag]
		if !ok || !set {
			continue
		}
		fp.variable = env.variable
		if !listFlags[fp.flag] {
			fp.value = env.value
		}
		p[i] = fp
	}
}

// configError lists every invalid-configuration problem; main exits 2.
type configError struct{ problems []error }

// Error lists the problems one a line and points to -help.
func (e configError) Error() string {
	var b strings.Builder
	b.WriteString("invalid configuration:")
	for _, p := range e.problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	b.WriteString("\nrun 's3-helper -help' for every flag, its form and its S3_HELPER_* variable")
	return b.String()
}

// Unwrap returns the problems.
func (e configError) Unwrap() []error { return e.problems }

// maxQuotedValueBytes bounds a bad value quoted back in an error.
const maxQuotedValueBytes = 64
