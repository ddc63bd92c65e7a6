package dokku

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Dokku's trees belong to the dokku user, and the root side of this tool
// (apply, remove, report through sudo) reads them. So every read below a
// Dokku root refuses what that user could plant to make root leak, block or
// balloon: a symbolic link in any component below the root (a link to a
// root-only file), a FIFO (open or read would block while holding the
// reconcile lock), a device, anything but a regular file, and a file larger
// than MaxFileSize.

// MaxFileSize is the most a Dokku file read here may hold. Properties,
// docker-options lists, Procfiles and CONTAINER files are a few hundred bytes.
const MaxFileSize = 16 << 10

// Errors of the safe reads; the path is in the wrapping error.
var (
	ErrSymlink    = errors.New("is a symbolic link (refused: Dokku's files are read without following links)")
	ErrNotRegular = errors.New("is not a regular file")
	ErrTooLarge   = fmt.Errorf("is larger than %d KiB", MaxFileSize>>10)
	ErrNotDir     = errors.New("is not a directory")
)

const (
	dirFlags  = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fileFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
)

// components splits path below root; ok is false when path is not below it.
func components(root, path string) ([]string, bool) {
	rel, err := filepath.Rel(root, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return nil, false
	}
	if rel == "." {
		return nil, true
	}
	return strings.Split(rel, "/"), true
}

// openBelow opens path, which must lie below root, without following a
// symbolic link in any component after root: each directory is opened
// relative to the previous one with O_NOFOLLOW. root itself comes from
// configuration and may be a link. The last component is opened with
// lastFlags. Errors wrap fs.ErrNotExist when something is missing.
func openBelow(root, path string, lastFlags int) (*os.File, error) {
	parts, ok := components(root, path)
	if !ok {
		return nil, fmt.Errorf("%s is not below %s", path, root)
	}
	fd, err := unix.Open(root, dirFlags&^unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: root, Err: err}
	}
	cur := root
	for i, name := range parts {
		flags := dirFlags
		if i == len(parts)-1 {
			flags = lastFlags
		}
		next, err := unix.Openat(fd, name, flags, 0)
		cur = filepath.Join(cur, name)
		if err != nil {
			err = explainOpen(fd, name, err)
			unix.Close(fd)
			return nil, &fs.PathError{Op: "open", Path: cur, Err: err}
		}
		unix.Close(fd)
		fd = next
	}
	return os.NewFile(uintptr(fd), path), nil
}

// explainOpen turns an O_NOFOLLOW/O_DIRECTORY failure into what was found.
func explainOpen(dirfd int, name string, err error) error {
	if err != unix.ELOOP && err != unix.ENOTDIR {
		return err
	}
	var st unix.Stat_t
	if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return ErrSymlink
	case unix.S_IFDIR:
		return err
	}
	return ErrNotDir
}

// ReadFileBelow reads path (below root) as a regular file of at most
// MaxFileSize bytes, never following a link below root and never blocking
// on a FIFO. Errors name the file and what was wrong with it, never its
// content. A missing file (or directory on the way) wraps fs.ErrNotExist.
func ReadFileBelow(root, path string) ([]byte, error) {
	f, err := openBelow(root, path, fileFlags)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, &fs.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w (%s)", ErrNotRegular, fileType(st.Mode()))}
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: path, Err: err}
	}
	if len(b) > MaxFileSize {
		return nil, &fs.PathError{Op: "read", Path: path, Err: ErrTooLarge}
	}
	return b, nil
}

// ReadDirBelow lists a directory below root without following links on the
// way (the entries themselves are not followed either).
func ReadDirBelow(root, dir string) ([]fs.DirEntry, error) {
	f, err := openBelow(root, dir, dirFlags)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

// IsDirBelow reports whether dir (below root, or root itself) is a real
// directory reached without following a link below root.
func IsDirBelow(root, dir string) bool {
	f, err := openBelow(root, dir, dirFlags)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func fileType(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a directory"
	}
	return "mode " + m.String()
}

// ShowValue quotes a value read from a Dokku file for an error message only
// when it is short printable ASCII; anything else is described, not shown,
// so that no error repeats bytes nobody validated.
func ShowValue(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("(%d bytes, not shown)", len(s))
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return fmt.Sprintf("(%d bytes with unprintable characters, not shown)", len(s))
		}
	}
	return fmt.Sprintf("%q", s)
}
