package rate

import "testing"

func BenchmarkParse(b *testing.B) {
	inputs := []string{"20mbit", "1.5gbit", "125kbps", "100mibit", "123456789"}
	for i := 0; i < b.N; i++ {
		if _, err := Parse(inputs[i%len(inputs)]); err != nil {
			b.Fatal(err)
		}
	}
}
