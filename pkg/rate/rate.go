// Package rate parses and formats bandwidth values the way tc(8) writes them
// ("20mbit", "5mbps"), as stored by `dokku resource:limit --network ...`.
//
// Units follow tc exactly (iproute2 tc/tc_util.c get_rate64 and tc(8) "RATES"),
// matched case-insensitively:
//
//	bit or a bare number   bits per second        (tc: "bit or a bare number: Bits per second")
//	kbit mbit gbit tbit    ×10^3 ×10^6 ×10^9 ×10^12 bits per second
//	bps                    BYTES per second (×8 bits)
//	kbps mbps gbps tbps    ×10^3 … ×10^12 BYTES per second
//	kibit mibit gibit tibit ×2^10 … ×2^40 bits per second
//	kibps mibps gibps tibps ×2^10 … ×2^40 BYTES per second
//
// A bare number is bits per second, as in tc: both the man page and the
// source (no suffix → scale 1, then the bits value is divided by 8 into tc's
// internal bytes) agree. Note the trap inherited from tc: "mbps" is megaBYTES.
//
// Where this parser is stricter than tc's strtod-based one, on purpose:
//   - decimal notation only: no sign, exponent, hex, "inf"/"nan", and the
//     number needs digits on both sides of a '.', so typos fail loudly;
//   - the value must be a whole number of bits per second ("1.5mbit" is
//     1500000 bit/s, "0.5bit" is an error), computed exactly, not in floats;
//   - no whitespace anywhere, no '%' (tc's percent-of-link-speed has no link
//     speed to refer to here), zero is rejected;
//   - at most MaxRate (10^15 bit/s): far above any real link and below 2^53,
//     so every valid rate is exact in float64/JSON and in the datapath's
//     nanosecond arithmetic.
package rate

import (
	"errors"
	"fmt"
	"github.com/dokku-netshape/dokku-netshape/internal/decimal"
	"strconv"
	"strings"
	"unicode"
)

// Rate is a bandwidth in bits per second.
type Rate uint64

// Common rates.
const (
	Bit  Rate = 1
	Kbit Rate = 1000 * Bit
	Mbit Rate = 1000 * Kbit
	Gbit Rate = 1000 * Mbit
	Tbit Rate = 1000 * Gbit

	// MaxRate is the largest rate Parse accepts (1 Pbit/s).
	MaxRate Rate = 1000 * Tbit
)

// maxInputLen bounds the work done on hostile input; the longest sensible
// rate ("1000000000000000bit") is far shorter.
const maxInputLen = 64

// Sentinel errors; every error returned by Parse wraps exactly one of them
// (test with errors.Is) and its message names the input.
var (
	ErrEmpty       = errors.New("empty rate")
	ErrWhitespace  = errors.New("whitespace is not allowed")
	ErrTooLong     = errors.New("too long")
	ErrNegative    = errors.New("negative rate")
	ErrSyntax      = errors.New("malformed number")
	ErrUnknownUnit = errors.New("unknown unit")
	ErrPercent     = errors.New("percent rates are not supported")
	ErrZero        = errors.New("rate must be greater than zero")
	ErrFractional  = errors.New("not a whole number of bits per second")
	ErrOutOfRange  = errors.New("rate too large")
)

// ParseError is the error type returned by Parse.
type ParseError struct {
	Input  string // the string given to Parse
	Err    error  // one of the Err* sentinels
	Detail string // optional extra context, e.g. the offending unit
}

func (e *ParseError) Error() string {
	msg := fmt.Sprintf("invalid rate %q: %v", e.Input, e.Err)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

func (e *ParseError) Unwrap() error { return e.Err }

type unit struct {
	name string
	mult uint64 // bits per second for one of this unit
}

// units in the order String prefers them (largest exact SI bit unit first).
var units = []unit{
	{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1},
	{"tibit", 1 << 40}, {"gibit", 1 << 30}, {"mibit", 1 << 20}, {"kibit", 1 << 10},
	{"tbps", 8e12}, {"gbps", 8e9}, {"mbps", 8e6}, {"kbps", 8e3}, {"bps", 8},
	{"tibps", 8 << 40}, {"gibps", 8 << 30}, {"mibps", 8 << 20}, {"kibps", 8 << 10},
}

var unitByName = func() map[string]uint64 {
	m := make(map[string]uint64, len(units)+1)
	for _, u := range units {
		m[u.name] = u.mult
	}
	m[""] = 1 // bare number: bits per second, as tc
	return m
}()

// UnitNames lists the accepted unit suffixes (lower case), for help texts.
func UnitNames() []string {
	names := make([]string, 0, len(units))
	for _, u := range units {
		names = append(names, u.name)
	}
	return names
}

// Parse reads a tc-style rate such as "20mbit", "1.5gbit", "100kbps" or
// "64000" (bits per second).
func Parse(s string) (Rate, error) {
	fail := func(err error, detail string) (Rate, error) {
		return 0, &ParseError{Input: s, Err: err, Detail: detail}
	}
	if s == "" {
		return fail(ErrEmpty, "")
	}
	if len(s) > maxInputLen {
		return 0, &ParseError{Input: s[:maxInputLen] + "…", Err: ErrTooLong, Detail: fmt.Sprintf("%d bytes, at most %d", len(s), maxInputLen)}
	}
	if strings.IndexFunc(s, unicode.IsSpace) >= 0 {
		return fail(ErrWhitespace, "")
	}
	if s[0] == '-' {
		return fail(ErrNegative, "")
	}

	intPart, fracPart, suffix, detail := decimal.Split(s)
	if detail != "" {
		return fail(ErrSyntax, detail)
	}
	if strings.HasSuffix(suffix, "%") {
		return fail(ErrPercent, "")
	}
	mult, ok := unitByName[strings.ToLower(suffix)]
	if !ok {
		if suffix != "" && (suffix[0] == '.' || decimal.IsDigit(suffix[0])) {
			return fail(ErrSyntax, "")
		}
		return fail(ErrUnknownUnit, fmt.Sprintf("%q (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)", suffix))
	}

	v, outcome := decimal.Scale(intPart, fracPart, mult, uint64(MaxRate))
	switch outcome {
	case decimal.Zero:
		return fail(ErrZero, "")
	case decimal.OutOfRange:
		return fail(ErrOutOfRange, "at most "+MaxRate.String())
	case decimal.Fractional:
		return fail(ErrFractional, "")
	}
	return Rate(v), nil
}

// MustParse is Parse for constants in code and tests; it panics on error.
func MustParse(s string) Rate {
	r, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return r
}

// String formats r with the largest SI bit unit that represents it exactly,
// as tc prints rates ("20mbit", "1500kbit", "1024bit"). Parse(r.String())
// returns r for every 0 < r ≤ MaxRate.
func (r Rate) String() string {
	v := uint64(r)
	for _, u := range units[:4] { // tbit, gbit, mbit, kbit
		if v != 0 && v%u.mult == 0 {
			return strconv.FormatUint(v/u.mult, 10) + u.name
		}
	}
	return strconv.FormatUint(v, 10) + "bit"
}

// BitsPerSecond returns r as a plain number.
func (r Rate) BitsPerSecond() uint64 { return uint64(r) }

// BytesPerSecond returns r in bytes per second, rounded up so a non-zero
// rate never becomes zero.
func (r Rate) BytesPerSecond() uint64 { return (uint64(r) + 7) / 8 }

// MarshalText writes the String form, so rates read back in JSON and reports.
func (r Rate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText accepts anything Parse accepts.
func (r *Rate) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}
