package jsonscan

import "unsafe"

// IsNumber checks the JSON number grammar, which is stricter than
// strconv's: no '+', no leading zeros, no hex, no "inf".
func IsNumber(t []byte) bool {
	i, ok := intPart(t)
	if !ok {
		return false
	}
	if i < len(t) && t[i] == '.' {
		d := digits(t, i+1)
		if d == i+1 {
			return false
		}
		i = d
	}
	if i < len(t) && (t[i] == 'e' || t[i] == 'E') {
		i++
		if i < len(t) && (t[i] == '+' || t[i] == '-') {
			i++
		}
		d := digits(t, i)
		if d == i {
			return false
		}
		i = d
	}
	return i == len(t)
}

// IsInteger is IsNumber without fraction or exponent.
func IsInteger(t []byte) bool {
	i, ok := intPart(t)
	return ok && i == len(t)
}

// intPart reads the sign and integer digits of a JSON number: where they
// end, and false when they are missing or have a leading zero.
func intPart(t []byte) (int, bool) {
	i := 0
	if i < len(t) && t[i] == '-' {
		i++
	}
	switch {
	case i >= len(t) || t[i]-'0' > 9:
		return i, false
	case t[i] == '0':
		return i + 1, true
	}
	return digits(t, i), true
}

// digits is the end of the run of decimal digits at t[i:].
func digits(t []byte, i int) int {
	for i < len(t) && t[i]-'0' <= 9 {
		i++
	}
	return i
}

// BytesString views b as a string without copying, for strconv calls that
// do not keep it.
func BytesString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// pow10 holds the powers of ten that float64 represents exactly.
var pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// FastFloat converts a JSON number whose decimal significand has at most
// 15 digits and whose exponent is within ±22: both are then exact float64s,
// and one multiplication or division rounds correctly (Clinger's fast
// path). It checks the JSON grammar as it goes; ok is false for anything it
// does not handle, valid or not, which the caller passes to the strict slow
// path.
func FastFloat(t []byte) (float64, bool) {
	i, n := 0, len(t)
	neg := n > 0 && t[0] == '-'
	if neg {
		i = 1
	}
	// The digits of the significand, integer and fraction, go into mant.
	// Up to 19 of them it cannot overflow, and has as many significant
	// digits as its value has; past that they are counted from the first
	// that is not zero (a leading zero is the integer part "0", and the
	// zeros after its point).
	start := i
	var mant uint64
	for ; i < n; i++ {
		d := t[i] - '0'
		if d > 9 {
			break
		}
		mant = mant*10 + uint64(d)
	}
	intEnd, frac, exp := i, i, 0
	if intEnd == start || (t[start] == '0' && intEnd-start > 1) {
		return 0, false // no integer digits, or a leading zero
	}
	if i < n && t[i] == '.' {
		i++
		frac = i
		for ; i < n; i++ {
			d := t[i] - '0'
			if d > 9 {
				break
			}
			mant = mant*10 + uint64(d)
		}
		if i == frac {
			return 0, false
		}
		exp = frac - i
	}
	if digits := intEnd - start + i - frac; digits > 19 {
		if t[start] == '0' {
			digits--
			for j := frac; j < i && t[j] == '0'; j++ {
				digits--
			}
		}
		if digits > 15 {
			return 0, false
		}
	} else if mant >= 1e15 {
		return 0, false
	}
	if i < n && (t[i] == 'e' || t[i] == 'E') {
		i++
		eneg := false
		if i < n && (t[i] == '+' || t[i] == '-') {
			eneg = t[i] == '-'
			i++
		}
		start, e := i, 0
		for ; i < n; i++ {
			d := t[i] - '0'
			if d > 9 {
				break
			}
			if e < 10000 {
				e = e*10 + int(d)
			}
		}
		if i == start {
			return 0, false
		}
		if eneg {
			e = -e
		}
		exp += e
	}
	if i != n {
		return 0, false
	}
	f := float64(mant)
	switch {
	case exp < 0 && exp >= -22: // the common case first
		f /= pow10[-exp]
	case mant == 0 || exp == 0:
	case exp > 0 && exp <= 22:
		f *= pow10[exp]
	default:
		return 0, false
	}
	if neg {
		f = -f
	}
	return f, true
}
