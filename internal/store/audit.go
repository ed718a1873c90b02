package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The audit log is a stream: append-only, kept for a retention period and a
// size bound, replicated like the rest of the state.
const (
	AuditStream  = "EBB_AUDIT"
	auditSubject = "ebb.audit"
)

// AuditRecord is one control-plane action: who (the key), what and on what.
type AuditRecord struct {
	Time    time.Time `json:"time"`
	KeyID   string    `json:"key_id,omitempty"` // empty when keys are not required
	KeyName string    `json:"key_name,omitempty"`
	Action  string    `json:"action"`
	Target  string    `json:"target,omitempty"`
	Status  int       `json:"status"`
	Remote  string    `json:"remote,omitempty"`
	// Seq is the record's position in the stream, set when read.
	Seq uint64 `json:"seq,omitempty"`
}

func (s *Store) setupAudit(ctx context.Context, cfg Config) error {
	sc := jetstream.StreamConfig{
		Name:        AuditStream,
		Description: "ebb audit log of control-plane actions",
		Subjects:    []string{auditSubject},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.AuditRetention,
		MaxBytes:    cfg.AuditMaxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	}
	st, err := s.js.CreateOrUpdateStream(ctx, sc)
	if err != nil {
		return fmt.Errorf("open store: stream %s: %w", AuditStream, err)
	}
	s.audit = st
	return nil
}

// AppendAudit stores rec, returning once it is stored.
func (s *Store) AppendAudit(ctx context.Context, rec AuditRecord) error {
	if err := s.check(); err != nil {
		return err
	}
	rec.Seq = 0
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("append audit: encode: %w", err)
	}
	if _, err := s.js.Publish(ctx, auditSubject, data); err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	return nil
}

// Audit returns the newest limit records from since on, oldest first: what
// an operator asking for the last day wants is its end, not its first
// thousand actions. At most limit records are held while reading.
func (s *Store) Audit(ctx context.Context, since time.Time, limit int) ([]AuditRecord, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return []AuditRecord{}, nil
	}
	var ring []AuditRecord // the newest read, a ring once full; next is its oldest
	next := 0
	err := readStream(ctx, s.audit, since, func(seq uint64, data []byte) error {
		var rec AuditRecord
		if json.Unmarshal(data, &rec) != nil {
			return nil
		}
		rec.Seq = seq
		if len(ring) < limit {
			ring = append(ring, rec)
		} else {
			ring[next] = rec
			next = (next + 1) % limit
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read audit: %w", err)
	}
	return append(ring[next:], ring[:next]...), nil
}

// readConsumerIdle is how long the server keeps a readStream consumer
// whose deletion failed.
const readConsumerIdle = 30 * time.Second

// errStopRead ends a readStream early, without an error.
var errStopRead = errors.New("stop reading")

// readStream calls each with every message of st published from since on
// (all of them for a zero since), oldest first, up to the last message
// stored when it began, until each returns an error: errStopRead ends it
// quietly, any other is returned. With filter subjects only messages on
// them are read: the server skips the rest, the client never sees them.
func readStream(ctx context.Context, st jetstream.Stream, since time.Time, each func(seq uint64, data []byte) error, filter ...string) error {
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs == 0 || (!since.IsZero() && !info.State.LastTime.IsZero() && info.State.LastTime.Before(since)) {
		return nil
	}
	cc := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, FilterSubjects: filter, InactiveThreshold: readConsumerIdle}
	if !since.IsZero() {
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := st.OrderedConsumer(ctx, cc)
	if err != nil {
		return err
	}
	// Deleted when read, not left to expire: the server caps a stream's
	// consumers (1000 by default since nats-server 2.15) and an ordered
	// consumer stays 5 minutes by default, so a dashboard polling usage or
	// the audit log would soon have every read refused.
	defer func() {
		if info := cons.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st.DeleteConsumer(dctx, info.Name) // a failure leaves it to readConsumerIdle
			cancel()
		}
	}()
	last := info.State.LastSeq
	var stop error
	for {
		batch, err := cons.FetchNoWait(256)
		if err != nil {
			return err
		}
		n := 0
		done := false
		// The batch is drained whatever each says, so that its delivery
		// ends cleanly.
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil || done || stop != nil {
				continue
			}
			if err := each(md.Sequence.Stream, m.Data()); err != nil {
				stop = err
			}
			if md.Sequence.Stream >= last {
				done = true
			}
		}
		if errors.Is(stop, errStopRead) {
			return nil
		}
		if stop != nil {
			return stop
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return err
		}
		if done || n == 0 {
			return nil
		}
	}
}
