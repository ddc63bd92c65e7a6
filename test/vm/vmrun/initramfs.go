package main

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// newc cpio, the format the kernel unpacks an initramfs from. Written here (rather than with the cpio
// tool) so the archive can hold /dev/console as a device node without the host needing one to copy.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChar = 0o020000
)

func (c *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&modeDir != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr + name + "\x00"))
	c.pad(len(hdr) + len(name) + 1)
	c.write(data)
	c.pad(len(data))
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

// pad aligns to 4 bytes, as newc wants after the name and after the data.
func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.err
}

// initramfsFile is one regular file of the archive: its path inside and where its bytes come from.
type initramfsFile struct {
	dst  string
	src  string // host file, or
	data []byte // literal content
	mode uint32
}

// writeInitramfs writes a gzip'd newc archive with the directories every guest needs, /dev/console,
// and files (parent directories are created as needed).
func writeInitramfs(out string, files []initramfsFile) error {
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create initramfs %s: %w", out, err)
	}
	defer f.Close()
	bw := bufio.NewWriter(f)
	// Speed over size: the kernel decompresses this under TCG, and most of it is already-dense .ko code.
	zw, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return err
	}
	c := &cpioWriter{w: zw}
	dirs := map[string]bool{}
	mkdir := func(d string) {
		var parts []string
		for p := d; p != "." && p != "/" && p != ""; p = path.Dir(p) {
			parts = append([]string{p}, parts...)
		}
		for _, p := range parts {
			if !dirs[p] {
				dirs[p] = true
				c.entry(strings.TrimPrefix(p, "/"), modeDir|0o755, 0, 0, nil)
			}
		}
	}
	for _, d := range []string{"/dev", "/proc", "/sys", "/newroot", "/hostro", "/rw"} {
		mkdir(d)
	}
	// Without /dev/console the kernel starts /init with no stdin/stdout/stderr.
	c.entry("dev/console", modeChar|0o600, 5, 1, nil)
	for _, fl := range files {
		data := fl.data
		if fl.src != "" {
			if data, err = os.ReadFile(fl.src); err != nil {
				return fmt.Errorf("read %s for initramfs: %w", fl.src, err)
			}
		}
		mkdir(path.Dir(fl.dst))
		c.entry(strings.TrimPrefix(fl.dst, "/"), modeFile|fl.mode, 0, 0, data)
	}
	if err := c.close(); err != nil {
		return fmt.Errorf("write initramfs %s: %w", out, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compress initramfs %s: %w", out, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write initramfs %s: %w", out, err)
	}
	return f.Close()
}

// resolveModules returns the .ko files (relative to modDir) to load for names, dependencies first,
// following modules.dep. Names built into the kernel (modules.builtin) are skipped.
func resolveModules(modDir string, names []string) ([]string, error) {
	deps, err := readModulesDep(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(l)] = true
		}
	}
	byName := map[string]string{}
	for ko := range deps {
		byName[modName(ko)] = ko
	}
	var order []string
	seen := map[string]bool{}
	var visit func(ko string)
	visit = func(ko string) {
		if seen[ko] {
			return
		}
		seen[ko] = true
		for _, d := range deps[ko] {
			visit(d)
		}
		order = append(order, ko)
	}
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		ko, ok := byName[n]
		switch {
		case ok:
			visit(ko)
		case builtin[n]:
		default:
			return nil, fmt.Errorf("module %s: neither in %s/modules.dep nor built in", n, modDir)
		}
	}
	return order, nil
}

func readModulesDep(p string) (map[string][]string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read %s (run test/vm/fetch-kernels.sh): %w", p, err)
	}
	deps := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		ko, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[ko] = strings.Fields(rest)
	}
	return deps, nil
}

// modName: "kernel/net/9p/9pnet_virtio.ko" → "9pnet_virtio" (kmod treats - and _ alike).
func modName(ko string) string {
	b := path.Base(ko)
	for _, ext := range []string{".xz", ".zst", ".gz", ".ko"} {
		b = strings.TrimSuffix(b, ext)
	}
	return strings.ReplaceAll(b, "-", "_")
}
