package server

import (
	"log/slog"
	"time"
)

// TLSFiles exposes the certificate reloader to the tests of package server_test.
type TLSFiles = tlsFiles

// LoadTLSFiles is loadTLSFiles, checking the files every interval by the clock now.
func LoadTLSFiles(cert, key string, log *slog.Logger, now func() time.Time, interval time.Duration) (*TLSFiles, error) {
	f, err := loadTLSFiles(cert, key, log, now)
	if f != nil {
		f.every = interval
	}
	return f, err
}

// HandshakeSerial is the serial number of the certificate a handshake now gets.
func (f *tlsFiles) HandshakeSerial() int64 {
	c, _ := f.config().GetCertificate(nil)
	return c.Leaf.SerialNumber.Int64()
}
