// Package promtest scrapes a metrics endpoint for tests and reads samples by
// the labels netshape uses, parsing with Prometheus' own text parser.
package promtest

import (
	"fmt"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are one scrape's metric families by name.
type Families map[string]*dto.MetricFamily

// Scrape fetches url and parses it.
func Scrape(url string) (Families, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse scrape of %s: %w", url, err)
	}
	return fams, nil
}

// Value is the sample of family labelled app, direction and process_type;
// ok is false when there is none.
func (f Families) Value(family, app, dir, proc string) (float64, bool) {
	fam := f[family]
	if fam == nil {
		return 0, false
	}
	for _, m := range fam.Metric {
		l := map[string]string{}
		for _, p := range m.Label {
			l[p.GetName()] = p.GetValue()
		}
		if l["app"] != app || l["direction"] != dir || l["process_type"] != proc {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

// HasApp reports whether any family has a series of app.
func (f Families) HasApp(app string) bool {
	for _, fam := range f {
		for _, m := range fam.Metric {
			for _, p := range m.Label {
				if p.GetName() == "app" && p.GetValue() == app {
					return true
				}
			}
		}
	}
	return false
}
