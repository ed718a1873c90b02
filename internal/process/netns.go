package process

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// openHostNetns opens ebb's own network namespace, the one spawner threads
// return to after a start inside an instance's. It is read from the thread
// that runs NewManager: every thread of ebb is in it, since only spawner
// threads ever leave it and they always come back (or stop spawning).
func openHostNetns(log *slog.Logger) *os.File {
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		log.Info("cannot open own network namespace; instances cannot be started in their own", "err", err)
		return nil
	}
	return f
}

// errNoHostNetns refuses a start in another network namespace when the
// thread could not come back to ebb's.
var errNoHostNetns = errors.New("network namespaces are unavailable: ebb's own cannot be opened")

// setns moves the spawner thread into the network namespace f. The thread is
// locked for the manager's life (spawnLoop), so no other goroutine runs on
// it in the meantime.
func (st *spawnThread) setns(f *os.File) error {
	if st.host == nil {
		return errNoHostNetns
	}
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter network namespace: %w", err)
	}
	st.away = f != st.host
	return nil
}

// leaveNetns brings the thread back to ebb's network namespace after a
// start; if it cannot, the thread stays marked away and its next start
// enters its target explicitly (so a process meant for ebb's namespace is
// never born in an instance's).
func (st *spawnThread) leaveNetns(m *Manager) {
	if !st.away {
		return
	}
	if err := st.setns(st.host); err != nil {
		m.log.Error("spawner thread cannot return to ebb's network namespace", "err", err)
		st.away = true
	}
}
