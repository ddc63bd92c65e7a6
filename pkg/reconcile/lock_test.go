package reconcile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A waiter gives up after its wait and names the holder; once the holder
// lets go, the lock is free at once.
func TestLockWaitTimesOutNamingTheHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "netshape.lock")
	unlock, err := LockWait(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = LockWait(path, 300*time.Millisecond)
	took := time.Since(start)
	if !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("second lock: %v, want ErrLockTimeout", err)
	}
	if want := fmt.Sprintf("held by pid %d: ", os.Getpid()); !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the path and %q", err, want)
	}
	if took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("gave up after %v, want about 300ms", took)
	}
	unlock()
	unlock2, err := LockWait(path, 300*time.Millisecond)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	unlock2()
}

// A lock path that is a symbolic link is not followed.
func TestLockRefusesALink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "netshape.lock")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LockWait(link, time.Second); err == nil {
		t.Fatal("locked through a link")
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("link target changed: %q", b)
	}
}
