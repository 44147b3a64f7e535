# Per-rank load of every strategy from `cadtrain plan --csv` (batch 0): one panel per strategy,
# linear and core-attention seconds stacked per rank. Called by `cadtrain plan --plot`:
#   gnuplot -e "csv='plan.csv'; png='plan.png'; strategies='packing_dp ring ...'" launch/plot_plan.gp
set datafile separator ','
n = words(strategies)
set terminal pngcairo size 1200, 300 * n font ',9' noenhanced
set output png
set multiplot layout n, 1 title 'per-rank compute per step (batch 0): linear (blue) + core attention (orange), exposed communication (red)'
set style fill solid 0.8 noborder
set ylabel 'seconds'
set xlabel 'rank'
set key off
do for [i = 1:n] {
  s = word(strategies, i)
  set title s
  filter = sprintf("< awk -F, '$1 == \"%s\" && $2 == 0' '%s'", s, csv)
  plot filter using 3:($7 + $6 + $13) with boxes lc rgb '#d62728', \
       filter using 3:($7 + $6) with boxes lc rgb '#ff7f0e', \
       filter using 3:7 with boxes lc rgb '#1f77b4'
}
unset multiplot
