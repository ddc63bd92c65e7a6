// Package size parses memory sizes the way Docker's `--memory` does, and
// reproduces how Dokku's resource plugin turns a stored memory value into
// that flag.
//
// Docker (docker/go-units RAMInBytes, used by `docker run --memory`) accepts,
// case-insensitively: a decimal number, at most one space, an optional unit
// prefix k/m/g/t/p, an optional 'i' and an optional 'b'. Prefixes are binary
// (k = 1024) whether or not the 'i' is written, and a bare number is bytes:
// "512m", "1g", "1024k", "2048", "1.5GiB", "64 MB".
//
// Where this is stricter than Docker, on purpose: Docker truncates fractional
// bytes ("1.5b" → 1) and accepts "1.2.3"-style junk until ParseFloat fails;
// here the result must be a whole number of bytes, zero is rejected (Docker
// reads a zero memory limit as "no limit"; an explicit no-limit is the
// caller's business), and values are limited to MaxSize (int64, as Docker).
// Negative values ("-1" = unlimited swap for --memory-swap) are rejected too;
// callers handling memory-swap check for "-1" first.
package size

import (
	"errors"
	"fmt"
	"github.com/dokku-netshape/dokku-netshape/internal/decimal"
	"math"
	"strconv"
	"strings"
	"unicode"
)

// Size is an amount of memory in bytes.
type Size uint64

// Binary units, as Docker uses for memory.
const (
	B   Size = 1
	KiB Size = 1024 * B
	MiB Size = 1024 * KiB
	GiB Size = 1024 * MiB
	TiB Size = 1024 * GiB
	PiB Size = 1024 * TiB

	// MaxSize is the largest size Parse accepts (Docker stores int64).
	MaxSize Size = math.MaxInt64
)

const maxInputLen = 64

// Sentinel errors; every error from Parse wraps exactly one (errors.Is) and
// its message names the input.
var (
	ErrEmpty       = errors.New("empty size")
	ErrWhitespace  = errors.New("whitespace is only allowed as one space between number and unit")
	ErrTooLong     = errors.New("too long")
	ErrNegative    = errors.New("negative size")
	ErrSyntax      = errors.New("malformed number")
	ErrUnknownUnit = errors.New("unknown unit")
	ErrZero        = errors.New("size must be greater than zero")
	ErrFractional  = errors.New("not a whole number of bytes")
	ErrOutOfRange  = errors.New("size too large")
)

// ParseError is the error type returned by Parse.
type ParseError struct {
	Input  string
	Err    error
	Detail string
}

func (e *ParseError) Error() string {
	msg := fmt.Sprintf("invalid size %q: %v", e.Input, e.Err)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

func (e *ParseError) Unwrap() error { return e.Err }

var prefixes = map[byte]Size{'k': KiB, 'm': MiB, 'g': GiB, 't': TiB, 'p': PiB}

// Parse reads a Docker-style memory size ("512m", "1g", "2048").
func Parse(s string) (Size, error) {
	fail := func(err error, detail string) (Size, error) {
		return 0, &ParseError{Input: s, Err: err, Detail: detail}
	}
	if s == "" {
		return fail(ErrEmpty, "")
	}
	if len(s) > maxInputLen {
		return 0, &ParseError{Input: s[:maxInputLen] + "…", Err: ErrTooLong, Detail: fmt.Sprintf("%d bytes, at most %d", len(s), maxInputLen)}
	}
	if s[0] == '-' {
		return fail(ErrNegative, "")
	}
	intPart, fracPart, rest, detail := decimal.Split(s)
	if detail != "" {
		if detail == "must start with a digit" && hasSpace(s) {
			return fail(ErrWhitespace, "")
		}
		return fail(ErrSyntax, detail)
	}
	// Docker allows exactly one ASCII space between the number and the unit.
	suffix := strings.TrimPrefix(rest, " ")
	if hasSpace(suffix) {
		return fail(ErrWhitespace, "")
	}
	mult, ok := unitMultiplier(suffix)
	if !ok {
		if suffix[0] == '.' || decimal.IsDigit(suffix[0]) {
			if suffix != rest { // "5 12m": a space inside the number
				return fail(ErrWhitespace, "")
			}
			return fail(ErrSyntax, "")
		}
		return fail(ErrUnknownUnit, fmt.Sprintf("%q (want b, k, m, g, t or p, optionally followed by b or ib)", suffix))
	}

	v, outcome := decimal.Scale(intPart, fracPart, uint64(mult), uint64(MaxSize))
	switch outcome {
	case decimal.Zero:
		return fail(ErrZero, "")
	case decimal.OutOfRange:
		return fail(ErrOutOfRange, "at most "+strconv.FormatUint(uint64(MaxSize), 10)+" bytes")
	case decimal.Fractional:
		return fail(ErrFractional, "")
	}
	return Size(v), nil
}

// unitMultiplier implements Docker's `([kmgtp])?i?b?` (case-insensitive).
func unitMultiplier(u string) (Size, bool) {
	u = strings.ToLower(u)
	mult := B
	if u != "" {
		if m, ok := prefixes[u[0]]; ok {
			mult = m
			u = u[1:]
		}
	}
	u = strings.TrimPrefix(u, "i")
	u = strings.TrimPrefix(u, "b")
	return mult, u == ""
}

// MustParse is Parse for constants; it panics on error.
func MustParse(s string) Size {
	v, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return v
}

// String formats s with the largest of g, m, k that represents it exactly,
// else in bytes, always with a unit letter ("512m", "1024g", "2047b") so the result is read the same
// by Docker and is left alone by Dokku's memory rule (see DokkuMemoryArg).
// Parse(s.String()) == s for 0 < s ≤ MaxSize.
func (s Size) String() string {
	v := uint64(s)
	for _, u := range []struct {
		name string
		mult Size
	}{{"g", GiB}, {"m", MiB}, {"k", KiB}} { // not t/p: Dokku would append "m" to those
		if v != 0 && v%uint64(u.mult) == 0 {
			return strconv.FormatUint(v/uint64(u.mult), 10) + u.name
		}
	}
	return strconv.FormatUint(v, 10) + "b"
}

// Bytes returns s as a plain number.
func (s Size) Bytes() uint64 { return uint64(s) }

// MarshalText writes the String form.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText accepts anything Parse accepts.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// dokkuMemorySuffixes is the exact, case-sensitive list Dokku's resource
// plugin checks (plugins/resource/functions.go addMemorySuffixForDocker).
var dokkuMemorySuffixes = []string{"b", "k", "m", "g", "KB", "MB", "GB", "B"}

// DokkuMemoryArg returns the value Dokku's docker-local scheduler passes to
// `docker run --memory=` (and `--memory-reservation=`) for a stored resource
// `memory` value: unless the value ends in one of the case-sensitive suffixes
// b, k, m, g, KB, MB, GB, B, Dokku appends "m" — so a bare "512" means 512 MiB.
// The rule is reproduced as is, quirks included: "512M" and "1G" do not match
// the list and become "512Mm"/"1Gm", which Docker then rejects. Only the
// `memory` key gets this treatment; memory-swap is passed through unchanged.
func DokkuMemoryArg(value string) string {
	for _, suf := range dokkuMemorySuffixes {
		if strings.HasSuffix(value, suf) {
			return value
		}
	}
	return value + "m"
}

// ParseDokkuMemory parses a stored resource `memory` value the way the
// container will actually get it: Parse(DokkuMemoryArg(value)).
func ParseDokkuMemory(value string) (Size, error) {
	arg := DokkuMemoryArg(value)
	v, err := Parse(arg)
	if err != nil && arg != value {
		return 0, fmt.Errorf("dokku passes memory %q to docker as %q: %w", value, arg, err)
	}
	return v, err
}

func hasSpace(s string) bool { return strings.IndexFunc(s, unicode.IsSpace) >= 0 }
