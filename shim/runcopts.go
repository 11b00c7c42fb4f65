package runckitshim

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
)

// decodeRuncOptions reads the TOML body that containerd's CRI plugin makes
// of a runtime's options table when the runtime is not io.containerd.runc.*:
// one `Key = value` per line for the scalar fields of runc's options
// (booleans, strings, integers), the key matched to a field's name whatever
// its case, as go-toml matches it. A table, an array, a multi-line string,
// an unknown or repeated key, or a value of the wrong type is an
// ErrInvalidArgument. It is written here, not taken from a TOML library,
// because such a library is a quarter of a MiB of every shim's memory for
// a dozen flat keys.
func decodeRuncOptions(body []byte, o *options.Options) error {
	v := reflect.ValueOf(o).Elem()
	seen := map[string]bool{}
	lines := strings.Split(string(body), "\n")
	for n, line := range lines {
		if n < len(lines)-1 {
			line = strings.TrimSuffix(line, "\r") // CRLF; a lone CR is refused
		}
		err := checkOptionText(line)
		if err == nil {
			err = decodeOptionLine(v, seen, strings.Trim(line, " \t"))
		}
		if err != nil {
			return fmt.Errorf("runtime options (TOML), line %d: %v: %w", n+1, err, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// checkOptionText refuses what TOML refuses anywhere in a line: bytes
// that are not UTF-8, and control characters other than tab.
func checkOptionText(line string) error {
	if !utf8.ValidString(line) {
		return fmt.Errorf("not UTF-8")
	}
	for _, r := range line {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return fmt.Errorf("control character %U", r)
		}
	}
	return nil
}

func decodeOptionLine(v reflect.Value, seen map[string]bool, line string) error {
	if line == "" || line[0] == '#' {
		return nil
	}
	if line[0] == '[' {
		return fmt.Errorf("table %s: runc's options are top-level keys", line)
	}
	key, rest, err := optionKey(line)
	if err != nil {
		return err
	}
	field, ok := optionField(v, key)
	if !ok {
		return fmt.Errorf("unknown key %q", key)
	}
	if seen[field.Name] {
		return fmt.Errorf("key %q given twice", key)
	}
	seen[field.Name] = true
	val, rest, err := optionValue(rest)
	if err != nil {
		return fmt.Errorf("%s: %v", key, err)
	}
	if rest = strings.TrimSpace(rest); rest != "" && rest[0] != '#' {
		return fmt.Errorf("%s: %q after the value", key, rest)
	}
	f := v.FieldByIndex(field.Index)
	switch f.Kind() {
	case reflect.Bool:
		b, ok := val.(bool)
		if !ok {
			return fmt.Errorf("%s: want true or false, not %v", key, val)
		}
		f.SetBool(b)
	case reflect.String:
		s, ok := val.(string)
		if !ok {
			return fmt.Errorf("%s: want a string, not %v", key, val)
		}
		f.SetString(s)
	case reflect.Uint32:
		i, ok := val.(int64)
		if !ok || i < 0 || i > 1<<32-1 {
			return fmt.Errorf("%s: want an integer from 0 to %d, not %v", key, uint32(1<<32-1), val)
		}
		f.SetUint(uint64(i))
	default:
		return fmt.Errorf("%s: a field of type %s", key, f.Type())
	}
	return nil
}

// optionKey splits `key = rest`; the key is bare or a basic or literal
// string.
func optionKey(line string) (key, rest string, err error) {
	if line[0] == '"' || line[0] == '\'' {
		v, r, err := optionValue(line)
		if err != nil {
			return "", "", err
		}
		key, rest = v.(string), r
	} else {
		end := strings.IndexFunc(line, func(r rune) bool {
			return !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		})
		if end <= 0 {
			return "", "", fmt.Errorf("%q: want key = value", line)
		}
		key, rest = line[:end], line[end:]
	}
	rest = strings.TrimLeft(rest, " \t")
	if !strings.HasPrefix(rest, "=") {
		if strings.HasPrefix(rest, ".") {
			return "", "", fmt.Errorf("dotted key %q: runc's options are top-level keys", line)
		}
		return "", "", fmt.Errorf("%q: want key = value", line)
	}
	return key, strings.TrimLeft(rest[1:], " \t"), nil
}

// optionField finds the exported field named key, whatever its case.
func optionField(v reflect.Value, key string) (reflect.StructField, bool) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); f.IsExported() && strings.EqualFold(f.Name, key) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// optionValue reads one scalar value from the start of s: a basic or
// literal string, true or false, or an integer (decimal with _, 0x, 0o,
// 0b). It returns what follows it.
func optionValue(s string) (any, string, error) {
	switch {
	case s == "":
		return nil, "", fmt.Errorf("no value")
	case strings.HasPrefix(s, `"""`) || strings.HasPrefix(s, "'''"):
		return nil, "", fmt.Errorf("a multi-line string")
	case s[0] == '\'':
		end := strings.IndexByte(s[1:], '\'')
		if end < 0 {
			return nil, "", fmt.Errorf("unterminated string %s", s)
		}
		return s[1 : end+1], s[end+2:], nil
	case s[0] == '"':
		for i := 1; i < len(s); i++ {
			switch s[i] {
			case '\\':
				if i+1 < len(s) && !strings.ContainsRune(`btnfr"\uU`, rune(s[i+1])) {
					return nil, "", fmt.Errorf("string %s: escape \\%c", s, s[i+1])
				}
				i++
			case '"':
				str, err := strconv.Unquote(s[:i+1])
				if err != nil {
					return nil, "", fmt.Errorf("string %s: %v", s[:i+1], err)
				}
				return str, s[i+1:], nil
			}
		}
		return nil, "", fmt.Errorf("unterminated string %s", s)
	case s[0] == '[' || s[0] == '{':
		return nil, "", fmt.Errorf("an array or table: runc's options are scalars")
	}
	end := strings.IndexAny(s, " \t#")
	if end < 0 {
		end = len(s)
	}
	word, rest := s[:end], s[end:]
	switch word {
	case "true":
		return true, rest, nil
	case "false":
		return false, rest, nil
	}
	digits := strings.TrimPrefix(strings.TrimPrefix(word, "+"), "-")
	if digits == "" || strings.HasPrefix(digits, "_") || strings.HasSuffix(digits, "_") || strings.Contains(digits, "__") ||
		len(digits) > 1 && digits[0] == '0' && !strings.ContainsAny(digits[1:2], "xob") {
		return nil, "", fmt.Errorf("value %q: want a string, true, false or an integer", word)
	}
	i, err := strconv.ParseInt(strings.ReplaceAll(word, "_", ""), 0, 64)
	if err != nil {
		return nil, "", fmt.Errorf("value %q: want a string, true, false or an integer", word)
	}
	return i, rest, nil
}
