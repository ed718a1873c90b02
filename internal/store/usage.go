package store

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Usage is two streams: every invocation's record, kept for the usage
// retention, and per-minute rollups, kept longer (a year and a month, or the
// record retention if that is longer) so that a cost report over months
// needs no raw records.
const (
	UsageStream        = "EBB_USAGE"
	UsageMinutesStream = "EBB_USAGE_MINUTES"
	// usageSubject is where record batches of one function go, under
	// usageSubject.<function>, so that one function's records are read
	// without the server shipping every other function's. Batches on
	// usageSubject itself (no function) were written before that; they
	// are still read until they age out.
	usageSubject       = "ebb.usage.records"
	usageMinuteSubject = "ebb.usage.minutes"
	// minRollupRetention is how long minute rollups are kept at least.
	minRollupRetention = 396 * 24 * time.Hour
)

func (s *Store) setupUsage(ctx context.Context, cfg Config) error {
	for _, sc := range []jetstream.StreamConfig{
		{Name: UsageStream, Description: "ebb invocation records", Subjects: []string{usageSubject, usageSubject + ".>"},
			MaxAge: cfg.UsageRetention, MaxBytes: cfg.UsageMaxBytes},
		{Name: UsageMinutesStream, Description: "ebb per-minute usage rollups", Subjects: []string{usageMinuteSubject},
			MaxAge: max(cfg.UsageRetention, minRollupRetention), MaxBytes: cfg.UsageMaxBytes},
	} {
		sc.Retention, sc.Discard, sc.Storage, sc.Replicas = jetstream.LimitsPolicy, jetstream.DiscardOld, jetstream.FileStorage, cfg.Replicas
		st, err := s.js.CreateOrUpdateStream(ctx, sc)
		if err != nil {
			return fmt.Errorf("open store: stream %s: %w", sc.Name, err)
		}
		if sc.Name == UsageStream {
			s.usage = st
		} else {
			s.usageMinutes = st
		}
	}
	return nil
}

// AppendUsageRecords stores a batch of invocation records of function fn.
func (s *Store) AppendUsageRecords(ctx context.Context, fn string, data []byte) error {
	if !validName(fn) {
		return fmt.Errorf("append usage: %w", functionNotFound(fn))
	}
	return s.appendUsage(ctx, usageSubject+"."+fn, data)
}

// AppendUsageMinute stores one minute's rollup.
func (s *Store) AppendUsageMinute(ctx context.Context, data []byte) error {
	return s.appendUsage(ctx, usageMinuteSubject, data)
}

func (s *Store) appendUsage(ctx context.Context, subject string, data []byte) error {
	if err := s.check(); err != nil {
		return err
	}
	if _, err := s.js.Publish(ctx, subject, data); err != nil {
		return fmt.Errorf("append usage: %w", err)
	}
	return nil
}

// UsageRecords calls each with every record batch stored from since on: of
// function fn (and any batch written before batches were kept per
// function), or of every function when fn is "".
func (s *Store) UsageRecords(ctx context.Context, fn string, since time.Time, each func([]byte) error) error {
	if err := s.check(); err != nil {
		return err
	}
	var filter []string
	if fn != "" {
		if !validName(fn) {
			return functionNotFound(fn)
		}
		filter = []string{usageSubject, usageSubject + "." + fn}
	}
	return readStream(ctx, s.usage, since, func(_ uint64, data []byte) error { return each(data) }, filter...)
}

// UsageMinutes calls each with every minute rollup stored from since on.
func (s *Store) UsageMinutes(ctx context.Context, since time.Time, each func([]byte) error) error {
	if err := s.check(); err != nil {
		return err
	}
	return readStream(ctx, s.usageMinutes, since, func(_ uint64, data []byte) error { return each(data) })
}
