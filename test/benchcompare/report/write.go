package report

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dokku-netshape/dokku-netshape/test/benchcompare/cells"
)

// jsonDoc is BENCHMARKS.json: the run, every cell without its raw probe samples (the percentiles and
// the rate series stay), the ratios and the headlines.
type jsonDoc struct {
	Run
	Ratios    []Ratio    `json:"ratios"`
	Headlines []Headline `json:"headlines"`
}

// JSON renders BENCHMARKS.json.
func JSON(run Run) ([]byte, error) {
	doc := jsonDoc{Run: run}
	doc.Cells = make([]cells.Cell, len(run.Cells))
	for i, c := range run.Cells {
		c.Ping.Samples, c.RR.Samples, c.Xfer.Samples = nil, nil, nil
		doc.Cells[i] = c
	}
	var kernels []string
	for _, k := range run.Kernels {
		kernels = append(kernels, k.Series)
	}
	doc.Ratios = finite(Ratios(run.Cells))
	doc.Headlines = Headlines(Ratios(run.Cells), kernels)
	return json.MarshalIndent(doc, "", " ")
}

// finite replaces infinite ratios (JSON has no infinity) with -1.
func finite(rs []Ratio) []Ratio {
	for i := range rs {
		if rs[i].Ratio > 1e300 {
			rs[i].Ratio = -1
		}
	}
	return rs
}

// Write produces the markdown file, the JSON file and the plots (in plotDir, linked relative to the
// markdown file).
func Write(run Run, mdPath, jsonPath, plotDir string) error {
	plots, err := Plots(run, plotDir)
	if err != nil {
		return err
	}
	rel := make([]string, len(plots))
	for i, p := range plots {
		if rel[i], err = filepath.Rel(filepath.Dir(mdPath), p); err != nil {
			return err
		}
	}
	if err := os.WriteFile(mdPath, []byte(Markdown(run, rel)), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", mdPath, err)
	}
	b, err := JSON(run)
	if err != nil {
		return fmt.Errorf("encode %s: %w", jsonPath, err)
	}
	if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", jsonPath, err)
	}
	return nil
}
