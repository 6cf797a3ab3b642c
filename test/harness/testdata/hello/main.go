// Command hello is a tiny main package that the harness tests build with
// BuildBinary.
package main

import "fmt"

func main() { fmt.Println("hello from kopia-maintd harness") }
