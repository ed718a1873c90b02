package platform

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func TestScratchProf(t *testing.T) {
	if os.Getenv("SCRATCH") == "" {
		t.Skip()
	}
	e := startONNX(t)
	model, _ := os.ReadFile("/tmp/m/mlp-l.onnx")
	dir := fnDir(t, "name: l\nruntime: onnx\nhandler: model.onnx\nmemory: 2048\nconcurrency: 64\nmin_instances: 1\nmax_instances: 1\n", nil)
	os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644)
	e.deploy(dir)
	width := 512
	raw := make([]byte, 32*width*4)
	for i := 0; i < 32*width; i++ {
		binary.LittleEndian.PutUint32(raw[i*4:], math.Float32bits(0.25))
	}
	hdr := fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[32,%d],"parameters":{"binary_data_size":%d}}],"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}`, width, len(raw))
	body := append([]byte(hdr), raw...)
	hh := map[string]string{"Inference-Header-Content-Length": strconv.Itoa(len(hdr))}
	direct := startONNXServe(t, "/tmp/m/mlp-l.onnx", "l")
	for _, u := range []string{direct, e.url, direct, e.url} {
		var r0, r1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
		res := loadTest(t, u+"/v2/models/l/infer", body, hh, 1, 2*time.Second)
		syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		cpu := time.Duration((r1.Utime.Nano() + r1.Stime.Nano()) - (r0.Utime.Nano() + r0.Stime.Nano()))
		n := res.rps * 2
		fmt.Printf("%s p50=%v cpu/req=%v (user %v sys %v)\n", u, res.p50, cpu/time.Duration(n), time.Duration(r1.Utime.Nano()-r0.Utime.Nano())/time.Duration(n), time.Duration(r1.Stime.Nano()-r0.Stime.Nano())/time.Duration(n))
	}
	f, _ := os.Create("/tmp/ebb.prof")
	pprof.StartCPUProfile(f)
	loadTest(t, e.url+"/v2/models/l/infer", body, hh, 1, 4*time.Second)
	pprof.StopCPUProfile()
	f.Close()
}
