package runtimeapi

// fifo is a growable ring buffer. It exists so that a steady stream of
// invocations and polls reuses one backing array instead of reallocating as a
// sliced-from-the-front slice would.
type fifo[T comparable] struct {
	buf  []T
	head int
	n    int
}

func (q *fifo[T]) len() int { return q.n }

func (q *fifo[T]) grow() {
	if q.n < len(q.buf) {
		return
	}
	buf := make([]T, max(4, 2*len(q.buf)))
	for i := 0; i < q.n; i++ {
		buf[i] = q.buf[(q.head+i)%len(q.buf)]
	}
	q.buf, q.head = buf, 0
}

func (q *fifo[T]) push(v T) {
	q.grow()
	q.buf[(q.head+q.n)%len(q.buf)] = v
	q.n++
}

func (q *fifo[T]) pushFront(v T) {
	q.grow()
	q.head = (q.head - 1 + len(q.buf)) % len(q.buf)
	q.buf[q.head] = v
	q.n++
}

func (q *fifo[T]) pop() (T, bool) {
	var zero T
	if q.n == 0 {
		return zero, false
	}
	v := q.buf[q.head]
	q.buf[q.head] = zero // let the element be collected
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	return v, true
}

// remove deletes the first element equal to v, keeping the others in order.
func (q *fifo[T]) remove(v T) bool {
	var zero T
	for i := 0; i < q.n; i++ {
		if q.buf[(q.head+i)%len(q.buf)] != v {
			continue
		}
		for j := i; j < q.n-1; j++ {
			q.buf[(q.head+j)%len(q.buf)] = q.buf[(q.head+j+1)%len(q.buf)]
		}
		q.buf[(q.head+q.n-1)%len(q.buf)] = zero
		q.n--
		return true
	}
	return false
}

func (q *fifo[T]) clear() {
	clear(q.buf)
	q.head, q.n = 0, 0
}
