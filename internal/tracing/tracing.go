// Package tracing makes the OpenTelemetry TracerProvider that exports ebb's
// spans over OTLP/HTTP (protobuf) to a collector: `ebb serve
// --otlp-endpoint URL`. Spans are batched and sent in the background by the
// provider, which owns that goroutine until Shutdown; a collector that is
// down costs dropped spans (the batch queue is bounded), never a request.
// What ebb traces, and how a caller's context reaches functions, is the
// platform's business (internal/platform/trace.go).
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// DefaultPath is where an OTLP/HTTP collector takes traces; an endpoint
// given without a path gets it, as OTEL_EXPORTER_OTLP_ENDPOINT does.
const DefaultPath = "/v1/traces"

// Config configures the provider.
type Config struct {
	// Endpoint is the collector's URL (required): http or https, with
	// DefaultPath added when it has no path (see Endpoint).
	Endpoint string
	// ServiceName is the service.name of ebb's spans; default "ebb".
	ServiceName string
	// Logger receives export failures; default discards them. The
	// OpenTelemetry error handler is process-wide: New points it here.
	Logger *slog.Logger
	// Options are more exporter options (tests: a client, a timeout).
	Options []otlptracehttp.Option
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	u, err := Endpoint(c.Endpoint)
	if err != nil {
		return err
	}
	c.Endpoint = u
	if c.ServiceName == "" {
		c.ServiceName = "ebb"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Endpoint checks a collector URL and adds DefaultPath when it has none
// ("http://collector:4318" → "http://collector:4318/v1/traces"); a URL with
// a path is used as it is.
func Endpoint(s string) (string, error) {
	if s == "" {
		return "", errors.New("otlp endpoint: empty")
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("otlp endpoint: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("otlp endpoint %q: scheme must be http or https", s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return "", fmt.Errorf("otlp endpoint %q: no host", s)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" {
		return "", fmt.Errorf("otlp endpoint %q: only scheme, host, port and path are allowed (headers such as credentials go in OTEL_EXPORTER_OTLP_HEADERS)", s)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path, u.RawPath = DefaultPath, ""
	}
	return u.String(), nil
}

// New makes a TracerProvider that exports to cfg.Endpoint, sampling every
// trace that its caller did not mark unsampled (a traceparent's flags
// decide). Shut it down to flush and stop it.
func New(cfg Config) (*sdktrace.TracerProvider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := append([]otlptracehttp.Option{otlptracehttp.WithEndpointURL(cfg.Endpoint)}, cfg.Options...)
	// The exporter connects lazily: New never waits for the collector.
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	log := cfg.Logger
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("opentelemetry", "err", err) }))
	res := resource.NewSchemaless(attribute.String("service.name", cfg.ServiceName))
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())),
	), nil
}
