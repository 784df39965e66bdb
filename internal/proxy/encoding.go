package proxy

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/mandate-dev/mandate/internal/audit"
)

// The masker can only find a credential in the bytes of the whole answer as the upstream made
// it: not in compressed bytes, not in a slice that cuts the credential in two. So on a call
// that carries a credential the proxy, not the agent, chooses the representation: it asks for
// the identity encoding and the whole answer, decodes a gzip or deflate answer the upstream
// sends anyway, and refuses any other encoding and any partial answer.

// Reasons of the answers refused here (see errors.go for the others).
const (
	reasonResponseEncoding = "response_encoding" // a content coding the proxy cannot decode to mask
	reasonResponseRange    = "response_range"    // a partial answer (206) to a call that carries a credential
)

// maxCodings is the most content codings the proxy decodes on one answer ("gzip, gzip").
const maxCodings = 3

// Decoding is streamed, in constant memory. A decoded answer may grow to at most
// maxExpansion times the bytes received plus expansionSlack: one gzip or deflate layer cannot
// expand more (its limit is about 1032:1), so only stacked layers built to explode are cut.
const (
	maxExpansion   = 1100
	expansionSlack = 1 << 20
)

// answerError refuses an upstream's answer the proxy cannot mask: 502 with its reason.
type answerError struct{ reason, desc string }

func (e *answerError) Error() string { return e.desc }

// ownRepresentation makes the upstream send what the masker can read: the identity encoding,
// and the whole answer (a Range or If-Range of the agent's is dropped; an answer without them
// is a valid answer to a range request, RFC 9110 §14.2).
func ownRepresentation(h http.Header) {
	h.Set("Accept-Encoding", "identity")
	delete(h, "Range")
	delete(h, "If-Range")
}

// decodeAnswer checks the answer to a call that carries a credential: a partial answer is
// refused, a gzip or deflate one is decoded (its validators and length, which describe the
// encoded bytes, are dropped), any other content coding is refused.
func decodeAnswer(res *http.Response, c *call) error {
	if res.StatusCode == http.StatusPartialContent || (res.Header.Get("Content-Range") != "" && res.StatusCode != http.StatusRequestedRangeNotSatisfiable) {
		return &answerError{reasonResponseRange, "the upstream answered with a part of the resource, which the proxy cannot check for an echoed credential"}
	}
	res.Header.Del("Accept-Ranges") // the proxy does not pass ranges on such calls
	ce, ok := res.Header["Content-Encoding"]
	if !ok {
		return nil
	}
	var codings []string
	for _, v := range ce {
		for coding := range strings.SplitSeq(v, ",") {
			switch coding = strings.ToLower(strings.TrimSpace(coding)); coding {
			case "", "identity":
			case "gzip", "x-gzip", "deflate":
				codings = append(codings, coding)
			default:
				// Not named: the value is the upstream's, and could carry the credential.
				return &answerError{reasonResponseEncoding, "the upstream answered in a Content-Encoding the proxy does not decode (it decodes gzip and deflate)"}
			}
		}
	}
	if len(codings) == 0 {
		delete(res.Header, "Content-Encoding")
		return nil
	}
	if len(codings) > maxCodings {
		return &answerError{reasonResponseEncoding, fmt.Sprintf("the upstream answered with %d content codings; the proxy decodes at most %d", len(codings), maxCodings)}
	}
	for _, k := range [...]string{"Content-Encoding", "Content-Length", "Content-Md5", "Digest", "Content-Digest", "Repr-Digest"} {
		delete(res.Header, k)
	}
	if et := res.Header.Get("Etag"); et != "" && !strings.HasPrefix(et, "W/") {
		res.Header.Set("Etag", "W/"+et) // the same content, no longer the same bytes
	}
	res.ContentLength = -1
	res.Uncompressed = true
	res.Body = &decodingReader{src: res.Body, codings: codings, c: c}
	return nil
}

// decodingReader decodes a body's content codings as it streams. It starts on the first Read,
// so an empty body (HEAD, 204, 304) is an empty answer.
type decodingReader struct {
	src     io.ReadCloser
	codings []string // in the order the upstream applied them
	c       *call
	wire    wireCounter
	r       io.Reader
	closers []io.Closer
	out     int64
	err     error
}

// wireCounter counts the bytes read from the upstream and keeps its read error, so a broken
// connection is not taken for a broken encoding.
type wireCounter struct {
	r   io.Reader
	n   int64
	err error
}

func (w *wireCounter) Read(b []byte) (int, error) {
	n, err := w.r.Read(b)
	w.n += int64(n)
	if err != nil && err != io.EOF {
		w.err = err
	}
	return n, err
}

var errExpansion = errors.New("proxy: the decoded answer expands beyond any single content coding")

func (d *decodingReader) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.r == nil {
		if err := d.open(); err != nil {
			return 0, d.fail(err)
		}
	}
	n, err := d.r.Read(p)
	d.out += int64(n)
	if d.out > maxExpansion*d.wire.n+expansionSlack {
		return 0, d.fail(errExpansion)
	}
	if err != nil && err != io.EOF {
		return n, d.fail(err)
	}
	return n, err
}

// open stacks one decoder per coding, the last applied first.
func (d *decodingReader) open() error {
	d.wire.r = d.src
	in := bufio.NewReaderSize(&d.wire, 4<<10)
	if _, err := in.Peek(1); err == io.EOF {
		d.r = in
		return nil
	}
	var r io.Reader = in
	for i := len(d.codings) - 1; i >= 0; i-- {
		var (
			dec io.ReadCloser
			err error
		)
		br, ok := r.(*bufio.Reader)
		if !ok {
			br = bufio.NewReaderSize(r, 4<<10)
		}
		switch d.codings[i] {
		case "gzip", "x-gzip":
			dec, err = gzip.NewReader(br)
		case "deflate":
			// "deflate" is zlib-wrapped (RFC 9110 §8.4.1.2), but servers also send raw
			// deflate: a zlib header is two bytes whose big-endian value is a multiple of 31.
			if h, _ := br.Peek(2); len(h) == 2 && h[0]&0x0f == 8 && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 {
				dec, err = zlib.NewReader(br)
			} else {
				dec = flate.NewReader(br)
			}
		}
		if err != nil {
			return err
		}
		d.closers = append(d.closers, dec)
		r = dec
	}
	d.r = r
	return nil
}

// fail records a decoding failure on the call (the answer has begun: the stream is cut) and
// keeps returning it. A read error of the upstream's connection is passed on as is.
func (d *decodingReader) fail(err error) error {
	if d.wire.err != nil {
		d.err = d.wire.err
		return d.err
	}
	d.err = err
	d.c.outcome, d.c.reason = audit.OutcomeFailure, reasonResponseEncoding
	d.c.detail = "the upstream's encoded answer could not be decoded"
	if errors.Is(err, errExpansion) {
		d.c.detail = "the upstream's encoded answer expanded beyond any single content coding"
	}
	return err
}

func (d *decodingReader) Close() error {
	for _, c := range d.closers {
		_ = c.Close()
	}
	return d.src.Close()
}
