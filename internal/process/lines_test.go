package process

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func TestReadLines(t *testing.T) {
	long := strings.Repeat("x", MaxLineBytes)
	tests := []struct {
		name  string
		input string
		want  []string
	}{
		{"empty", "", nil},
		{"one line", "hello\n", []string{"hello"}},
		{"no final newline", "a\nb", []string{"a", "b"}},
		{"empty lines", "\n\na\n\n", []string{"", "", "a", ""}},
		{"carriage return kept", "a\r\n", []string{"a\r"}},
		{"exactly the limit", long + "\n", []string{long}},
		{"exactly the limit, no newline", long, []string{long}},
		{"one over the limit", long + "y\n", []string{long, "y"}},
		{"twice the limit", long + long + "\nz\n", []string{long, long, "z"}},
		{"limit then empty line", long + "\n\n", []string{long, ""}},
		{"long after short", "s\n" + long + "yz\nw", []string{"s", long, "yz", "w"}},
	}
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"whole", func(r io.Reader) io.Reader { return r }},
		{"one byte", iotest.OneByteReader},
		{"half", iotest.HalfReader},
		{"data with EOF", iotest.DataErrReader},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				var got []string
				readLines(rd.wrap(strings.NewReader(tt.input)), func(line []byte) {
					if len(line) > MaxLineBytes {
						t.Errorf("line of %d bytes, limit %d", len(line), MaxLineBytes)
					}
					got = append(got, string(line))
				}, nil)
				if !slices.Equal(got, tt.want) {
					t.Errorf("got %d lines, want %d; first difference: %s", len(got), len(tt.want), firstDiff(got, tt.want))
				}
			})
		}
	}
}

func TestReadLinesStopsOnError(t *testing.T) {
	r := io.MultiReader(strings.NewReader("a\nb"), iotest.ErrReader(errors.New("pipe closed")))
	var got []string
	readLines(r, func(line []byte) { got = append(got, string(line)) }, nil)
	if want := []string{"a", "b"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
