# Server CPU per operation, by scenario and gateway: gnuplot -e "dat='chart.dat'; out='chart.png'" chart.gp
if (!exists("dat")) dat = "chart.dat"
if (!exists("out")) out = "chart.png"
set terminal pngcairo size 1100,560 font "sans,10"
set output out
set title "Server CPU per operation (user + sys / operations; lower is better)"
set ylabel "µs per operation (log scale)"
set logscale y
set grid ytics
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top left
set xtics nomirror
set yrange [10:*]
plot for [col=2:4] dat using col:xtic(1) title columnheader(col)
