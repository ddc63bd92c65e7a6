package rate

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	cases := []struct {
		in   string
		want Rate
	}{
		{"1", 1},
		{"64000", 64000},
		{"1bit", 1},
		{"20mbit", 20_000_000},
		{"20MBIT", 20_000_000},
		{"20Mbit", 20_000_000},
		{"1kbit", 1000},
		{"1gbit", 1_000_000_000},
		{"2tbit", 2_000_000_000_000},
		{"1.5mbit", 1_500_000},
		{"0.001kbit", 1},
		{"0.5kbit", 500},
		{"010mbit", 10_000_000},
		{"1bps", 8},
		{"1Bps", 8},
		{"5mbps", 40_000_000},
		{"5MBps", 40_000_000},
		{"1kbps", 8000},
		{"1gbps", 8_000_000_000},
		{"1tbps", 8_000_000_000_000},
		{"0.125bps", 1},
		{"1kibit", 1024},
		{"1Kibit", 1024},
		{"1mibit", 1 << 20},
		{"1gibit", 1 << 30},
		{"1tibit", 1 << 40},
		{"1kibps", 8 << 10},
		{"1KiBps", 8 << 10},
		{"1mibps", 8 << 20},
		{"1gibps", 8 << 30},
		{"1tibps", 8 << 40},
		{"0.5kibit", 512},
		{"1000tbit", MaxRate},
		{"125tbps", MaxRate},
		{"1000000000000000", MaxRate},
		{"1000000000000000.000bit", MaxRate},
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): unexpected error %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("Parse(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	long := strings.Repeat("1", 70)
	cases := []struct {
		in       string
		sentinel error
		msg      string
	}{
		{"", ErrEmpty, `invalid rate "": empty rate`},
		{" 20mbit", ErrWhitespace, `invalid rate " 20mbit": whitespace is not allowed`},
		{"20mbit ", ErrWhitespace, `invalid rate "20mbit ": whitespace is not allowed`},
		{"20 mbit", ErrWhitespace, `invalid rate "20 mbit": whitespace is not allowed`},
		{"20mbit\n", ErrWhitespace, `invalid rate "20mbit\n": whitespace is not allowed`},
		{"20\tmbit", ErrWhitespace, `invalid rate "20\tmbit": whitespace is not allowed`},
		{"20\u00a0mbit", ErrWhitespace, `invalid rate "20\u00a0mbit": whitespace is not allowed`},
		{"-1mbit", ErrNegative, `invalid rate "-1mbit": negative rate`},
		{"-0", ErrNegative, `invalid rate "-0": negative rate`},
		{"+1mbit", ErrSyntax, `invalid rate "+1mbit": malformed number: must start with a digit`},
		{"mbit", ErrSyntax, `invalid rate "mbit": malformed number: must start with a digit`},
		{".5mbit", ErrSyntax, `invalid rate ".5mbit": malformed number: a decimal point needs digits on both sides`},
		{"5.mbit", ErrSyntax, `invalid rate "5.mbit": malformed number: a decimal point needs digits on both sides`},
		{"1.2.3mbit", ErrSyntax, `invalid rate "1.2.3mbit": malformed number`},
		{"1..2", ErrSyntax, `invalid rate "1..2": malformed number: a decimal point needs digits on both sides`},
		{"0x10", ErrUnknownUnit, `invalid rate "0x10": unknown unit: "x10" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"1e6", ErrUnknownUnit, `invalid rate "1e6": unknown unit: "e6" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"20mb", ErrUnknownUnit, `invalid rate "20mb": unknown unit: "mb" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"20m", ErrUnknownUnit, `invalid rate "20m": unknown unit: "m" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"20mbits", ErrUnknownUnit, `invalid rate "20mbits": unknown unit: "mbits" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"20mbit/s", ErrUnknownUnit, `invalid rate "20mbit/s": unknown unit: "mbit/s" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"1pbit", ErrUnknownUnit, `invalid rate "1pbit": unknown unit: "pbit" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"1kib", ErrUnknownUnit, `invalid rate "1kib": unknown unit: "kib" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"infbit", ErrSyntax, `invalid rate "infbit": malformed number: must start with a digit`},
		{"NaN", ErrSyntax, `invalid rate "NaN": malformed number: must start with a digit`},
		{"20%", ErrPercent, `invalid rate "20%": percent rates are not supported`},
		{"99.5%", ErrPercent, `invalid rate "99.5%": percent rates are not supported`},
		{"0", ErrZero, `invalid rate "0": rate must be greater than zero`},
		{"0mbit", ErrZero, `invalid rate "0mbit": rate must be greater than zero`},
		{"0.000kbit", ErrZero, `invalid rate "0.000kbit": rate must be greater than zero`},
		{"0.5bit", ErrFractional, `invalid rate "0.5bit": not a whole number of bits per second`},
		{"1.5", ErrFractional, `invalid rate "1.5": not a whole number of bits per second`},
		{"0.0001kbit", ErrFractional, `invalid rate "0.0001kbit": not a whole number of bits per second`},
		{"1.0001kibit", ErrFractional, `invalid rate "1.0001kibit": not a whole number of bits per second`},
		{"0.1bps", ErrFractional, `invalid rate "0.1bps": not a whole number of bits per second`},
		{"1001tbit", ErrOutOfRange, `invalid rate "1001tbit": rate too large: at most 1000tbit`},
		{"126tbps", ErrOutOfRange, `invalid rate "126tbps": rate too large: at most 1000tbit`},
		{"1000000000000001", ErrOutOfRange, `invalid rate "1000000000000001": rate too large: at most 1000tbit`},
		{"18446744073709551616", ErrOutOfRange, `invalid rate "18446744073709551616": rate too large: at most 1000tbit`},
		{"99999999999999999999999tibps", ErrOutOfRange, `invalid rate "99999999999999999999999tibps": rate too large: at most 1000tbit`},
		{long, ErrTooLong, `invalid rate "` + long[:64] + `…": too long: 70 bytes, at most 64`},
		{"２０mbit", ErrSyntax, `invalid rate "２０mbit": malformed number: must start with a digit`},
		{"20ｍbit", ErrUnknownUnit, `invalid rate "20ｍbit": unknown unit: "ｍbit" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"20mbit\x00", ErrUnknownUnit, `invalid rate "20mbit\x00": unknown unit: "mbit\x00" (want bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps or an IEC kibit…tibps)`},
		{"clear", ErrSyntax, `invalid rate "clear": malformed number: must start with a digit`},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d malformed cases", len(cases))
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if err == nil {
			t.Errorf("Parse(%q) = %d, want error", c.in, got)
			continue
		}
		if !errors.Is(err, c.sentinel) {
			t.Errorf("Parse(%q) error %v does not wrap %v", c.in, err, c.sentinel)
		}
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("Parse(%q) error is %T, want *ParseError", c.in, err)
		}
		if err.Error() != c.msg {
			t.Errorf("Parse(%q) error\n got %s\nwant %s", c.in, err.Error(), c.msg)
		}
	}
}

func TestString(t *testing.T) {
	cases := []struct {
		r    Rate
		want string
	}{
		{1, "1bit"},
		{999, "999bit"},
		{1000, "1kbit"},
		{1024, "1024bit"},
		{1_500_000, "1500kbit"},
		{20_000_000, "20mbit"},
		{40_000_000, "40mbit"},
		{1_000_000_000, "1gbit"},
		{MaxRate, "1000tbit"},
		{0, "0bit"},
	}
	for _, c := range cases {
		if got := c.r.String(); got != c.want {
			t.Errorf("Rate(%d).String() = %q, want %q", uint64(c.r), got, c.want)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	vals := []Rate{1, 7, 8, 999, 1000, 1001, 1024, 1 << 20, 8 << 30, 123456789, 20 * Mbit, 5 * Gbit, MaxRate - 1, MaxRate}
	for _, in := range []string{"1.5mbit", "100kbps", "3kibps", "7tibit", "12345"} {
		vals = append(vals, MustParse(in))
	}
	for _, v := range vals {
		s := v.String()
		got, err := Parse(s)
		if err != nil {
			t.Errorf("Parse(%q) (from %d): %v", s, uint64(v), err)
			continue
		}
		if got != v {
			t.Errorf("round trip %d → %q → %d", uint64(v), s, uint64(got))
		}
	}
}

func TestBytesPerSecond(t *testing.T) {
	if got := MustParse("5mbps").BytesPerSecond(); got != 5_000_000 {
		t.Errorf("5mbps = %d B/s, want 5000000", got)
	}
	if got := Rate(9).BytesPerSecond(); got != 2 {
		t.Errorf("9bit = %d B/s, want 2 (rounded up)", got)
	}
}

func TestJSON(t *testing.T) {
	type doc struct {
		R Rate `json:"r"`
	}
	b, err := json.Marshal(doc{R: 20 * Mbit})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"r":"20mbit"}` {
		t.Fatalf("marshal = %s", b)
	}
	var d doc
	if err := json.Unmarshal([]byte(`{"r":"5mbps"}`), &d); err != nil {
		t.Fatal(err)
	}
	if d.R != 40*Mbit {
		t.Fatalf("unmarshal = %d", d.R)
	}
	if err := json.Unmarshal([]byte(`{"r":"0.5bit"}`), &d); !errors.Is(err, ErrFractional) {
		t.Fatalf("unmarshal bad value: %v", err)
	}
}

func TestMustParsePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("MustParse(\"x\") did not panic")
		}
	}()
	MustParse("x")
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"20mbit", "1.5gbit", "5mbps", "0.5bit", "1kibps", "", "-1", "1e6", "99999999999999999999tbit", "20%", "0.001kbit"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q): error %T is not *ParseError", s, err)
			}
			return
		}
		if r == 0 || r > MaxRate {
			t.Fatalf("Parse(%q) = %d out of range", s, uint64(r))
		}
		out := r.String()
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(%q) → %q does not parse: %v", s, out, err)
		}
		if back != r {
			t.Fatalf("Parse(%q) = %d → %q → %d", s, uint64(r), out, uint64(back))
		}
	})
}
