package conformance

// PassFloor is how many backend cases pass in full runs today (ONNX Runtime
// 1.24 against Debian's libonnx-testdata, onnx 1.12): a full run that passes
// fewer fails, so that a regression which turns passing cases into skips or
// excused failures cannot go unnoticed. When a change makes more cases pass,
// raise it to the "passed" count the test logs
// ("conformance: N cases: P passed, …") and remove the cases that now pass
// from knownFailures; never lower it to make a run pass.
const PassFloor = 958

// known is an excused failure: why it fails, and whether it may pass
// anyway (random output, or a machine with the locale installed), in which
// case a pass does not make the entry stale.
type known struct {
	why     string
	mayPass bool
}

const (
	whyTraining      = "ai.onnx.preview.training operators are not in ONNX Runtime's inference build"
	whyRandom        = "random output (Bernoulli samples)"
	whyRandomDropout = "random output (dropout in training mode)"
	whyFloatString   = "ONNX Runtime prints floats with more digits than numpy"
	whyBF16Rounding  = "ONNX Runtime rounds to nearest, onnx 1.12's reference truncates"
	whyCastlikeShape = "the test data's \"like\" input has shape [1], the model declares [3,4]"
	whyFFT           = "ONNX Runtime's FFT error near 0 exceeds atol 1e-7"
	whyAlignCorners  = "ONNX Runtime's align_corners downsampling differs from the reference"
	whyMaxUnpool     = "ONNX Runtime places the unpooled values differently from the reference"
	whyBatchwise     = "ONNX Runtime does not implement batchwise (layout 1) recurrent operators"
	whyLocale        = "StringNormalizer needs the en_US.UTF-8 locale, which the machine may lack"
	whyNoTypeKernel  = "ONNX Runtime has no kernel for this operator with this element type"
	whyOldOpset      = "ONNX Runtime has no kernel for the operator's old opset (1 or 6) in this exported model"
)

// knownFailures are the backend cases, by name, where ONNX Runtime 1.24
// itself disagrees with the reference outputs of onnx 1.12's test data or
// cannot run the case. They are reported but do not fail the test; any
// other failure does, and so does a listed case that passes without
// mayPass (remove it, and raise PassFloor).
var knownFailures = map[string]known{
	"node/test_adagrad":                                                 {whyTraining, false},
	"node/test_adagrad_multiple":                                        {whyTraining, false},
	"node/test_adam":                                                    {whyTraining, false},
	"node/test_adam_multiple":                                           {whyTraining, false},
	"node/test_bernoulli":                                               {whyRandom, true},
	"node/test_bernoulli_double":                                        {whyRandom, true},
	"node/test_bernoulli_double_expanded":                               {whyRandom, true},
	"node/test_bernoulli_expanded":                                      {whyRandom, true},
	"node/test_bernoulli_seed":                                          {whyRandom, true},
	"node/test_bernoulli_seed_expanded":                                 {whyRandom, true},
	"node/test_bitshift_left_uint16":                                    {whyNoTypeKernel, false},
	"node/test_bitshift_right_uint16":                                   {whyNoTypeKernel, false},
	"node/test_cast_FLOAT_to_BFLOAT16":                                  {whyBF16Rounding, false},
	"node/test_cast_FLOAT_to_STRING":                                    {whyFloatString, false},
	"node/test_castlike_BFLOAT16_to_FLOAT":                              {whyCastlikeShape, false},
	"node/test_castlike_BFLOAT16_to_FLOAT_expanded":                     {whyCastlikeShape, false},
	"node/test_castlike_FLOAT_to_BFLOAT16":                              {whyCastlikeShape, false},
	"node/test_castlike_FLOAT_to_BFLOAT16_expanded":                     {whyCastlikeShape, false},
	"node/test_castlike_FLOAT_to_STRING":                                {whyFloatString, false},
	"node/test_castlike_FLOAT_to_STRING_expanded":                       {whyFloatString, false},
	"node/test_dft":                                                     {whyFFT, false},
	"node/test_dft_axis":                                                {whyFFT, false},
	"node/test_dft_inverse":                                             {whyFFT, false},
	"node/test_gru_batchwise":                                           {whyBatchwise, false},
	"node/test_lstm_batchwise":                                          {whyBatchwise, false},
	"node/test_max_int16":                                               {whyNoTypeKernel, false},
	"node/test_max_uint16":                                              {whyNoTypeKernel, false},
	"node/test_maxunpool_export_with_output_shape":                      {whyMaxUnpool, false},
	"node/test_min_int16":                                               {whyNoTypeKernel, false},
	"node/test_min_uint16":                                              {whyNoTypeKernel, false},
	"node/test_momentum":                                                {whyTraining, false},
	"node/test_momentum_multiple":                                       {whyTraining, false},
	"node/test_nesterov_momentum":                                       {whyTraining, false},
	"node/test_pow_types_float32_uint32":                                {whyNoTypeKernel, false},
	"node/test_pow_types_float32_uint64":                                {whyNoTypeKernel, false},
	"node/test_resize_downsample_scales_cubic_align_corners":            {whyAlignCorners, false},
	"node/test_resize_downsample_scales_linear_align_corners":           {whyAlignCorners, false},
	"node/test_simple_rnn_batchwise":                                    {whyBatchwise, false},
	"node/test_stft":                                                    {whyFFT, false},
	"node/test_stft_with_window":                                        {whyFFT, false},
	"node/test_strnormalizer_export_monday_casesensintive_lower":        {whyLocale, true},
	"node/test_strnormalizer_export_monday_casesensintive_nochangecase": {whyLocale, true},
	"node/test_strnormalizer_export_monday_casesensintive_upper":        {whyLocale, true},
	"node/test_strnormalizer_export_monday_empty_output":                {whyLocale, true},
	"node/test_strnormalizer_export_monday_insensintive_upper_twodim":   {whyLocale, true},
	"node/test_training_dropout":                                        {whyRandomDropout, true},
	"node/test_training_dropout_default":                                {whyRandomDropout, true},
	"node/test_training_dropout_default_mask":                           {whyRandomDropout, true},
	"node/test_training_dropout_mask":                                   {whyRandomDropout, true},
	"pytorch-converted/test_AvgPool1d":                                  {whyOldOpset, false},
	"pytorch-converted/test_AvgPool1d_stride":                           {whyOldOpset, false},
	"pytorch-converted/test_AvgPool2d":                                  {whyOldOpset, false},
	"pytorch-converted/test_AvgPool2d_stride":                           {whyOldOpset, false},
	"pytorch-converted/test_AvgPool3d":                                  {whyOldOpset, false},
	"pytorch-converted/test_AvgPool3d_stride":                           {whyOldOpset, false},
	"pytorch-converted/test_AvgPool3d_stride1_pad0_gpu_input":           {whyOldOpset, false},
	"pytorch-converted/test_BatchNorm1d_3d_input_eval":                  {whyOldOpset, false},
	"pytorch-converted/test_BatchNorm2d_eval":                           {whyOldOpset, false},
	"pytorch-converted/test_BatchNorm2d_momentum_eval":                  {whyOldOpset, false},
	"pytorch-converted/test_BatchNorm3d_eval":                           {whyOldOpset, false},
	"pytorch-converted/test_BatchNorm3d_momentum_eval":                  {whyOldOpset, false},
	"pytorch-converted/test_GLU":                                        {whyOldOpset, false},
	"pytorch-converted/test_GLU_dim":                                    {whyOldOpset, false},
	"pytorch-converted/test_Linear":                                     {whyOldOpset, false},
	"pytorch-converted/test_PReLU_1d":                                   {whyOldOpset, false},
	"pytorch-converted/test_PReLU_1d_multiparam":                        {whyOldOpset, false},
	"pytorch-converted/test_PReLU_2d":                                   {whyOldOpset, false},
	"pytorch-converted/test_PReLU_2d_multiparam":                        {whyOldOpset, false},
	"pytorch-converted/test_PReLU_3d":                                   {whyOldOpset, false},
	"pytorch-converted/test_PReLU_3d_multiparam":                        {whyOldOpset, false},
	"pytorch-converted/test_PoissonNLLLLoss_no_reduce":                  {whyOldOpset, false},
	"pytorch-converted/test_Softsign":                                   {whyOldOpset, false},
	"pytorch-operator/test_operator_add_broadcast":                      {whyOldOpset, false},
	"pytorch-operator/test_operator_add_size1_broadcast":                {whyOldOpset, false},
	"pytorch-operator/test_operator_add_size1_right_broadcast":          {whyOldOpset, false},
	"pytorch-operator/test_operator_add_size1_singleton_broadcast":      {whyOldOpset, false},
	"pytorch-operator/test_operator_addconstant":                        {whyOldOpset, false},
	"pytorch-operator/test_operator_addmm":                              {whyOldOpset, false},
	"pytorch-operator/test_operator_basic":                              {whyOldOpset, false},
	"pytorch-operator/test_operator_mm":                                 {whyOldOpset, false},
	"pytorch-operator/test_operator_non_float_params":                   {whyOldOpset, false},
	"pytorch-operator/test_operator_params":                             {whyOldOpset, false},
	"pytorch-operator/test_operator_pow":                                {whyOldOpset, false},
	"simple/test_gradient_of_add":                                       {whyTraining, false},
	"simple/test_gradient_of_add_and_mul":                               {whyTraining, false},
	"simple/test_strnorm_model_monday_casesensintive_lower":             {whyLocale, true},
	"simple/test_strnorm_model_monday_casesensintive_nochangecase":      {whyLocale, true},
	"simple/test_strnorm_model_monday_casesensintive_upper":             {whyLocale, true},
	"simple/test_strnorm_model_monday_empty_output":                     {whyLocale, true},
	"simple/test_strnorm_model_monday_insensintive_upper_twodim":        {whyLocale, true},
}

// KnownFailure says whether r is one of the known ONNX Runtime differences
// or limitations, and why.
func KnownFailure(r Result) (string, bool) {
	k, ok := knownFailures[r.Case]
	return k.why, ok
}
