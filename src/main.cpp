#include "portcullis/app/cli.hpp"

int main(int argc, char** argv) { return portcullis::app::main_entry(argc, argv); }
