package push

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// glob is a compiled glob-style pattern (spec appendix: "*" matches zero or
// more characters, "?" exactly one), matched case-insensitively: the
// pattern is lower-cased here, the event's strings once per event.
type glob struct {
	pattern string // lower-cased
	literal bool   // no wildcards: plain comparison
	// words is for content.body: the pattern must match a substring that
	// starts and ends at word boundaries.
	words bool
	// re matches a body with wildcards; literals need no regexp.
	re *regexp.Regexp
}

func compileGlob(pattern string, words bool) glob {
	g := glob{pattern: strings.ToLower(pattern), words: words}
	g.literal = !strings.ContainsAny(pattern, "*?")
	if words && !g.literal {
		g.re = wordGlobRegexp(g.pattern)
	}
	return g
}

// match matches the lower-cased value s.
func (g *glob) match(s string) bool {
	switch {
	case g.words && g.literal:
		return containsWord(s, g.pattern)
	case g.words:
		return g.re.MatchString(s)
	case g.literal:
		return s == g.pattern
	}
	return globMatch(g.pattern, s)
}

// globMatch reports whether the whole of s matches pattern p. It is the
// usual single-backtrack algorithm: on a mismatch, retry from the last
// "*" with one more character swallowed; linear in practice, quadratic at
// worst, never exponential. "?" and "*" step over whole UTF-8 characters.
func globMatch(p, s string) bool {
	px, sx := 0, 0
	starPx, starSx := -1, -1
	for px < len(p) || sx < len(s) {
		if px < len(p) {
			switch c := p[px]; c {
			case '*':
				starPx, starSx = px, sx
				px++
				continue
			case '?':
				if sx < len(s) {
					_, n := utf8.DecodeRuneInString(s[sx:])
					px++
					sx += n
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if starPx >= 0 && starSx < len(s) {
			_, n := utf8.DecodeRuneInString(s[starSx:])
			starSx += n
			px, sx = starPx+1, starSx
			continue
		}
		return false
	}
	return true
}

// isWordByte reports whether b is in [A-Za-z0-9_], the characters that are
// not word boundaries (spec: event_match on content.body). Bytes of
// multi-byte characters are boundaries, as those characters are.
func isWordByte(b byte) bool {
	return b == '_' || ('0' <= b && b <= '9') || ('a' <= b && b <= 'z') || ('A' <= b && b <= 'Z')
}

// containsWord reports whether lit occurs in s starting and ending at word
// boundaries (the start or end of s, or a non-word character).
func containsWord(s, lit string) bool {
	for from := 0; from <= len(s); {
		i := strings.Index(s[from:], lit)
		if i < 0 {
			return false
		}
		start := from + i
		end := start + len(lit)
		if (start == 0 || !isWordByte(s[start-1])) && (end == len(s) || !isWordByte(s[end])) {
			return true
		}
		from = start + 1
	}
	return false
}

// wordGlobRegexp turns a glob into a regexp matching it between word
// boundaries, as Synapse does for content.body.
func wordGlobRegexp(p string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString(`(?s)(?:^|[^A-Za-z0-9_])`)
	for _, r := range p {
		switch r {
		case '*':
			b.WriteString(`.*?`)
		case '?':
			b.WriteString(`.`)
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString(`(?:[^A-Za-z0-9_]|$)`)
	return regexp.MustCompile(b.String())
}
