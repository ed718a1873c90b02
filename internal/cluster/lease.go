package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Lease is the scheduler lease as stored: who holds it and until when.
type Lease struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

// Holder is the leader that the lease l names at now: its holder while it
// runs, "" once it has expired (or when there is none, the zero Lease).
func Holder(l Lease, now time.Time) string {
	if l.Holder == "" || !now.Before(l.Expires) {
		return ""
	}
	return l.Holder
}

// Claim says whether node me should write the lease, given the one read
// (the zero Lease when there is none) at now: to take it when it is free or
// expired, to renew it when it is its own.
func Claim(l Lease, me string, now time.Time) bool {
	h := Holder(l, now)
	return h == "" || h == me
}

// margin is how much earlier than the lease's end its holder stops acting
// as leader: a node that reads the lease as expired by a clock slightly
// ahead must not find the old holder still firing.
func margin(lease time.Duration) time.Duration { return lease / 5 }

// Leader says whether this node holds the scheduler lease now. A node that
// does not run for it (Config.Elect off: a single node) always leads.
func (c *Cluster) Leader() bool {
	if !c.cfg.Elect {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg.Now().Before(c.until)
}

// elect reads the lease and, when Claim says so, writes it with a
// compare-and-set on the revision read: of two nodes claiming at once, one
// wins and the other reads the winner's lease next time.
func (c *Cluster) elect(ctx context.Context) error {
	me := c.cfg.Self.Name
	var l Lease
	var rev uint64
	e, err := c.leases.Get(ctx, SchedulerLease)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		c.lose()
		return fmt.Errorf("read lease: %w", err)
	default:
		rev = e.Revision()
		if err := json.Unmarshal(e.Value(), &l); err != nil {
			l = Lease{} // corrupt: treat as free and overwrite it
		}
	}
	start := c.cfg.Now()
	if !Claim(l, me, start) {
		c.lose()
		return nil
	}
	b, _ := json.Marshal(Lease{Holder: me, Expires: start.Add(c.cfg.Lease).UTC()})
	if rev == 0 {
		_, err = c.leases.Create(ctx, SchedulerLease, b)
	} else {
		_, err = c.leases.Update(ctx, SchedulerLease, b, rev)
	}
	if err != nil {
		c.lose()
		if errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err) {
			return nil // another node claimed it first
		}
		return fmt.Errorf("claim lease: %w", err)
	}
	c.mu.Lock()
	was := c.cfg.Now().Before(c.until)
	c.until = start.Add(c.cfg.Lease - margin(c.cfg.Lease))
	c.mu.Unlock()
	if !was {
		c.cfg.Logger.Info("cluster: this node leads the schedules", "node", me)
	}
	return nil
}

func (c *Cluster) lose() {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Unsure of the lease (another node holds it, or it could not be
	// read or renewed), stop leading at once: a tick missed meanwhile is
	// fired late by the next leader, while a doubled one could not be
	// undone.
	c.until = time.Time{}
}

// isWrongSequence recognises the server's answer to a compare-and-set
// whose revision is stale.
func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return true // the second is what a replicated (R>1) bucket says
	}
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}
