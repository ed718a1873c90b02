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

// Audit returns up to limit records from since on, oldest first.
func (s *Store) Audit(ctx context.Context, since time.Time, limit int) ([]AuditRecord, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	info, err := s.audit.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read audit: %w", err)
	}
	if info.State.Msgs == 0 || limit <= 0 {
		return []AuditRecord{}, nil
	}
	cc := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if !since.IsZero() {
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := s.audit.OrderedConsumer(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("read audit: %w", err)
	}
	out := []AuditRecord{}
	last := info.State.LastSeq
	for len(out) < limit {
		batch, err := cons.FetchNoWait(min(limit-len(out), 256))
		if err != nil {
			return nil, fmt.Errorf("read audit: %w", err)
		}
		n := 0
		done := false
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			var rec AuditRecord
			if json.Unmarshal(m.Data(), &rec) == nil {
				rec.Seq = md.Sequence.Stream
				out = append(out, rec)
			}
			if md.Sequence.Stream >= last {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("read audit: %w", err)
		}
		if done || n == 0 {
			break
		}
	}
	return out, nil
}
