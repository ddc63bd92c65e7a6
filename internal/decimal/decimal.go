// Package decimal reads the number part of unit-suffixed values ("1.5" in
// "1.5mbit", "512" in "512m") and scales it exactly, for pkg/rate and
// pkg/size, which differ only in their units and errors.
package decimal

import "math/big"

// Split reads "digits[.digits]" at the start of s and returns the integer
// and fraction digits and what follows. detail is non-empty when the number
// is malformed.
func Split(s string) (intPart, fracPart, rest, detail string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	intPart = s[:i]
	if i < len(s) && s[i] == '.' {
		j := i + 1
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		fracPart = s[i+1 : j]
		if intPart == "" || fracPart == "" {
			return "", "", "", "a decimal point needs digits on both sides"
		}
		i = j
	}
	if intPart == "" {
		return "", "", "", "must start with a digit"
	}
	return intPart, fracPart, s[i:], ""
}

// Outcome of Scale.
type Outcome int

const (
	OK         Outcome = iota
	Zero               // the value is zero
	OutOfRange         // the value exceeds max
	Fractional         // the value is not a whole number of units
)

// Scale computes (intPart.fracPart) × mult exactly, in integers, so no
// float rounding can turn "1.1mbit" into 1099999 bit/s.
func Scale(intPart, fracPart string, mult, max uint64) (uint64, Outcome) {
	num, _ := new(big.Int).SetString(intPart+fracPart, 10) // Split guarantees digits
	den := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(fracPart))), nil)
	num.Mul(num, new(big.Int).SetUint64(mult))
	q, r := new(big.Int).QuoRem(num, den, new(big.Int))
	switch {
	case q.Sign() == 0 && r.Sign() == 0:
		return 0, Zero
	case q.Cmp(new(big.Int).SetUint64(max)) > 0:
		return 0, OutOfRange
	case r.Sign() != 0:
		return 0, Fractional
	}
	return q.Uint64(), OK
}

// IsDigit reports whether c is an ASCII digit.
func IsDigit(c byte) bool { return isDigit(c) }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
