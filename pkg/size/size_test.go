package size

import (
	"errors"
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	cases := []struct {
		in   string
		want Size
	}{
		{"2048", 2048},
		{"1", 1},
		{"512m", 512 * MiB},
		{"512M", 512 * MiB},
		{"512mb", 512 * MiB},
		{"512MB", 512 * MiB},
		{"512MiB", 512 * MiB},
		{"512mib", 512 * MiB},
		{"512mi", 512 * MiB},
		{"512 m", 512 * MiB},
		{"512 MB", 512 * MiB},
		{"1g", GiB},
		{"1G", GiB},
		{"1024k", 1024 * KiB},
		{"1024K", MiB},
		{"100b", 100},
		{"100B", 100},
		{"100ib", 100},
		{"100i", 100},
		{"1t", TiB},
		{"1p", PiB},
		{"1.5g", GiB + 512*MiB},
		{"0.5k", 512},
		{"0.5m", 512 * KiB},
		{"007m", 7 * MiB},
		{"512 ", 512},
		{"8191p", 8191 * PiB},
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("Parse(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	long := strings.Repeat("9", 65)
	unit := ` (want b, k, m, g, t or p, optionally followed by b or ib)`
	cases := []struct {
		in       string
		sentinel error
		msg      string
	}{
		{"", ErrEmpty, `invalid size "": empty size`},
		{" 512m", ErrWhitespace, `invalid size " 512m": whitespace is only allowed as one space between number and unit`},
		{"512  m", ErrWhitespace, `invalid size "512  m": whitespace is only allowed as one space between number and unit`},
		{"512m ", ErrWhitespace, `invalid size "512m ": whitespace is only allowed as one space between number and unit`},
		{"512\tm", ErrWhitespace, `invalid size "512\tm": whitespace is only allowed as one space between number and unit`},
		{"512m\n", ErrWhitespace, `invalid size "512m\n": whitespace is only allowed as one space between number and unit`},
		{"5 12m", ErrWhitespace, `invalid size "5 12m": whitespace is only allowed as one space between number and unit`},
		{"-1", ErrNegative, `invalid size "-1": negative size`},
		{"-512m", ErrNegative, `invalid size "-512m": negative size`},
		{"+1m", ErrSyntax, `invalid size "+1m": malformed number: must start with a digit`},
		{"m", ErrSyntax, `invalid size "m": malformed number: must start with a digit`},
		{".5g", ErrSyntax, `invalid size ".5g": malformed number: a decimal point needs digits on both sides`},
		{"5.g", ErrSyntax, `invalid size "5.g": malformed number: a decimal point needs digits on both sides`},
		{"1.2.3m", ErrSyntax, `invalid size "1.2.3m": malformed number`},
		{"1x", ErrUnknownUnit, `invalid size "1x": unknown unit: "x"` + unit},
		{"1kk", ErrUnknownUnit, `invalid size "1kk": unknown unit: "kk"` + unit},
		{"1mbit", ErrUnknownUnit, `invalid size "1mbit": unknown unit: "mbit"` + unit},
		{"1bi", ErrUnknownUnit, `invalid size "1bi": unknown unit: "bi"` + unit},
		{"1mm", ErrUnknownUnit, `invalid size "1mm": unknown unit: "mm"` + unit},
		{"1e6", ErrUnknownUnit, `invalid size "1e6": unknown unit: "e6"` + unit},
		{"0x10", ErrUnknownUnit, `invalid size "0x10": unknown unit: "x10"` + unit},
		{"1E", ErrUnknownUnit, `invalid size "1E": unknown unit: "E"` + unit},
		{"50%", ErrUnknownUnit, `invalid size "50%": unknown unit: "%"` + unit},
		{"0", ErrZero, `invalid size "0": size must be greater than zero`},
		{"0m", ErrZero, `invalid size "0m": size must be greater than zero`},
		{"0.0g", ErrZero, `invalid size "0.0g": size must be greater than zero`},
		{"1.5", ErrFractional, `invalid size "1.5": not a whole number of bytes`},
		{"1.5b", ErrFractional, `invalid size "1.5b": not a whole number of bytes`},
		{"0.0001k", ErrFractional, `invalid size "0.0001k": not a whole number of bytes`},
		{"8192p", ErrOutOfRange, `invalid size "8192p": size too large: at most 9223372036854775807 bytes`},
		{"9223372036854775808", ErrOutOfRange, `invalid size "9223372036854775808": size too large: at most 9223372036854775807 bytes`},
		{long, ErrTooLong, `invalid size "` + long[:64] + `…": too long: 65 bytes, at most 64`},
		{"unlimited", ErrSyntax, `invalid size "unlimited": malformed number: must start with a digit`},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if err == nil {
			t.Errorf("Parse(%q) = %d, want error", c.in, got)
			continue
		}
		if !errors.Is(err, c.sentinel) {
			t.Errorf("Parse(%q): %v does not wrap %v", c.in, err, c.sentinel)
		}
		if err.Error() != c.msg {
			t.Errorf("Parse(%q) error\n got %s\nwant %s", c.in, err.Error(), c.msg)
		}
	}
}

func TestStringRoundTrip(t *testing.T) {
	cases := []struct {
		s    Size
		want string
	}{
		{1, "1b"},
		{2047, "2047b"},
		{2048, "2k"},
		{512 * MiB, "512m"},
		{1536 * MiB, "1536m"},
		{GiB, "1g"},
		{TiB, "1024g"},
		{PiB, "1048576g"},
		{MaxSize, "9223372036854775807b"},
	}
	for _, c := range cases {
		if got := c.s.String(); got != c.want {
			t.Errorf("Size(%d).String() = %q, want %q", uint64(c.s), got, c.want)
		}
		back, err := Parse(c.s.String())
		if err != nil || back != c.s {
			t.Errorf("round trip %d → %q → %d, %v", uint64(c.s), c.s.String(), uint64(back), err)
		}
		// String output must survive Dokku's memory rule unchanged.
		if DokkuMemoryArg(c.s.String()) != c.s.String() {
			t.Errorf("Dokku would rewrite %q to %q", c.s.String(), DokkuMemoryArg(c.s.String()))
		}
	}
}

func TestDokkuMemoryArg(t *testing.T) {
	// Expected values follow Dokku's addMemorySuffixForDocker exactly.
	cases := map[string]string{
		"512":   "512m",
		"1024":  "1024m",
		"512m":  "512m",
		"1g":    "1g",
		"100b":  "100b",
		"100k":  "100k",
		"512MB": "512MB",
		"1GB":   "1GB",
		"64KB":  "64KB",
		"100B":  "100B",
		"512M":  "512Mm", // case-sensitive list: Dokku appends m, Docker then rejects it
		"1G":    "1Gm",
		"1K":    "1Km",
		"1gib":  "1gib",
		"1.5":   "1.5m",
		"":      "m",
	}
	for in, want := range cases {
		if got := DokkuMemoryArg(in); got != want {
			t.Errorf("DokkuMemoryArg(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseDokkuMemory(t *testing.T) {
	v, err := ParseDokkuMemory("512")
	if err != nil || v != 512*MiB {
		t.Fatalf("ParseDokkuMemory(512) = %d, %v", v, err)
	}
	v, err = ParseDokkuMemory("2048b")
	if err != nil || v != 2048 {
		t.Fatalf("ParseDokkuMemory(2048b) = %d, %v", v, err)
	}
	_, err = ParseDokkuMemory("512M")
	if !errors.Is(err, ErrUnknownUnit) {
		t.Fatalf("ParseDokkuMemory(512M) error = %v, want ErrUnknownUnit", err)
	}
	want := `dokku passes memory "512M" to docker as "512Mm": invalid size "512Mm": unknown unit: "Mm" (want b, k, m, g, t or p, optionally followed by b or ib)`
	if err.Error() != want {
		t.Fatalf("error\n got %s\nwant %s", err, want)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"512m", "1g", "2048", "1.5GiB", "64 MB", "", "-1", "1.5b", "8192p"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := Parse(s)
		if err != nil {
			return
		}
		if v == 0 || v > MaxSize {
			t.Fatalf("Parse(%q) = %d out of range", s, uint64(v))
		}
		back, err := Parse(v.String())
		if err != nil || back != v {
			t.Fatalf("Parse(%q) = %d → %q → %d, %v", s, uint64(v), v.String(), uint64(back), err)
		}
	})
}
