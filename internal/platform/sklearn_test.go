package platform

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// sklearnApp is the README's headline python function: numpy and sklearn
// preloaded, a model fitted at module scope (once, in the zygote, before
// any instance is forked), predictions in the handler.
const sklearnApp = `
import json, os
import numpy as np
from sklearn.datasets import load_iris
from sklearn.neighbors import KNeighborsClassifier

X, y = load_iris(return_X_y=True)
model = KNeighborsClassifier(n_neighbors=3).fit(X, y)
FITTED_IN = os.getpid()

def predict(features):
    f = np.array(features, dtype=float)
    return {"labels": model.predict(f).tolist(), "proba": model.predict_proba(f).tolist()}

def handler(event, context):
    out = predict(event["features"])
    out["fitted_in"], out["pid"] = FITTED_IN, os.getpid()
    return out
`

// TestSklearnModelAtModuleScope deploys sklearnApp through the platform and
// checks its predictions exactly: the iris classes of three known flowers,
// and class probabilities equal to those the same code gives in a plain
// interpreter outside ebb.
func TestSklearnModelAtModuleScope(t *testing.T) {
	needPython(t)
	if err := exec.Command(python, "-c", "import numpy, sklearn").Run(); err != nil {
		t.Skipf("numpy and sklearn are not installed for %s (Debian python3-numpy, python3-sklearn): %v", python, err)
	}
	features := `[[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3], [6.0, 2.7, 5.0, 1.6]]`
	out, err := exec.Command(python, "-c", sklearnApp+"\nprint(json.dumps(predict("+features+")))").Output()
	if err != nil {
		t.Fatalf("the model outside ebb: %v", err)
	}
	var want struct {
		Labels []int       `json:"labels"`
		Proba  [][]float64 `json:"proba"`
	}
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	// setosa, versicolor, virginica, and a borderline virginica: two of
	// its three nearest neighbours are.
	if l, p := mustJSON(t, want.Labels), mustJSON(t, want.Proba[3]); l != "[0,1,2,2]" || p != "[0,0.3333333333333333,0.6666666666666666]" {
		t.Fatalf("outside ebb the model predicts %s, last probabilities %s; want [0,1,2,2] and [0,1/3,2/3]", l, p)
	}

	e := start(t, "")
	e.deploy(fnDir(t, "name: iris\nruntime: python\nhandler: app.handler\nmemory: 512\npreload: [numpy, sklearn]\n", map[string]string{"app.py": sklearnApp}))
	waitSpare(t, e, "iris")
	for round, wantCold := range []string{"true", "false"} {
		code, body, hdr := e.invoke("iris", `{"features": `+features+`}`)
		if code != 200 {
			t.Fatalf("round %d: invoke = %d %s", round, code, body)
		}
		if got := hdr.Get("Ebb-Cold-Start"); got != wantCold {
			t.Errorf("round %d: Ebb-Cold-Start = %q, want %s", round, got, wantCold)
		}
		var got struct {
			Labels   []int       `json:"labels"`
			Proba    [][]float64 `json:"proba"`
			FittedIn int         `json:"fitted_in"`
			PID      int         `json:"pid"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("round %d: %v: %s", round, err, body)
		}
		if gl, wl := mustJSON(t, got.Labels), mustJSON(t, want.Labels); gl != wl {
			t.Errorf("round %d: labels %s, want %s", round, gl, wl)
		}
		if gp, wp := mustJSON(t, got.Proba), mustJSON(t, want.Proba); gp != wp {
			t.Errorf("round %d: probabilities %s, want %s", round, gp, wp)
		}
		// Fitted at module scope in the zygote, not in the instance.
		if got.FittedIn == got.PID || got.FittedIn == 0 {
			t.Errorf("round %d: model fitted in pid %d, the instance is %d: want it fitted before the fork", round, got.FittedIn, got.PID)
		}
	}
	if !strings.Contains(e.logText(), `"zygote":true`) {
		t.Error("the cold start did not come from the zygote")
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
